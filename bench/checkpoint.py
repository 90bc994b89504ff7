"""Checkpoint benchmark: save and load of a ~200 MB training state (a 15.7M-parameter
transformer-shaped model with AdamW state) against raw put_file / get_file of the same number
of bytes, in the same run, on the local store and on S3 (SeaweedFS, when `weed` is installed);
plus the peak RSS of each operation over the RSS before it, relative to the state size, and
the CPU time each took (saving competes with training for it, and it shows when the machine,
not the code, moved a ratio).

    python -m bench.checkpoint [--quick] [--no-s3] [--vm-workarounds] [--out bench/results]

`--quick` leaves out the local store with direct I/O (`storage_direct_bytes`, opt-in); every
store is still timed 5 times.
`run()` returns the result dict; `main()` also writes checkpoint.json and checkpoint.md.
Save = stream every shard from the tensors into the store (hashing on the way) + manifest +
pointer; load = list + stream every shard into fresh tensors, verifying its sha256. Peak RSS
comes from VmHWM after resetting it through /proc/self/clear_refs (Linux), so it covers the
whole operation. `--vm-workarounds` frees a ballast file of the checkpoint's size before every
timed operation (`bench.common.Ballast`) and reports the host's steal time beside each one.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import statistics
import tempfile
from pathlib import Path

import attrs
import torch

from adapters.clock import SystemClock
from adapters.scratch import TempScratch
from adapters.storage.local import LocalStoreOpener
from bench.common import (
    Ballast,
    PeakRss,
    machine,
    parser,
    save,
    stats,
    timed_async,
    vm_workarounds_flag,
)
from bench.compression import model_shapes
from core.checkpoints import (
    Checkpointer,
    CheckpointMeta,
    CheckpointSettings,
    CheckpointState,
    load_checkpoint,
)
from ports import Bucket, ObjectStore

VERSION = "bench"
GOAL_RATIO = 0.80
GOAL_RSS = 1.2
# An opt-in variant, shown beside the default store; the goals are judged on the defaults.
DIRECT_LABEL = "local, direct I/O from 8 MiB"


def _bucket(name: str) -> Bucket:
    return Bucket(name=name, account_id="bench", access_key_id="k", secret_access_key="s")


def training_state(layers: int = 5) -> tuple[CheckpointState, int]:
    """Parameters, AdamW moments and a scheduler after one step; and their tensor bytes."""
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02)
        for s in model_shapes(layers=layers).values()
    ]
    names = list(model_shapes(layers=layers))
    opt = torch.optim.AdamW(params, lr=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    sched.step()
    for p in params:
        p.grad = None
    model = {n: p.data for n, p in zip(names, params, strict=True)}
    state = CheckpointState(model=model, optimizer=opt.state_dict(), scheduler=sched.state_dict())
    nbytes = sum(t.numel() * t.element_size() for t in model.values())
    nbytes += sum(
        t.numel() * t.element_size() for s in opt.state_dict()["state"].values() for t in s.values()
    )
    return state, nbytes


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)", fh.read()).group(1))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@attrs.frozen
class Measured:
    seconds: float
    cpu_seconds: float  # this process's, every thread, kernel time included
    peak_growth: int  # peak RSS over the RSS before, bytes
    result: object
    # With --vm-workarounds: the machine's CPU time meanwhile, and how much of it the
    # hypervisor gave to others (`steal` in /proc/stat): a save keeps every core busy, a raw
    # put one, so steal moves the save's ratio without the code having changed.
    ticks: int = 0
    stolen: int = 0


def _cpu_ticks() -> tuple[int, int]:
    """All CPU time of the machine and its stolen part, in clock ticks (Linux)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), steal


async def _measured(fn, ballast: Ballast | None) -> Measured:
    """`fn` timed with its peak RSS growth; with a ballast (--vm-workarounds), right after
    freeing it and with the host's steal time sampled."""
    if ballast:
        await asyncio.to_thread(ballast.fill)
    gc.collect()
    if ballast:
        await asyncio.to_thread(ballast.release)  # right before: see Ballast
        ticks, stolen = _cpu_ticks()
    if not _reset_peak():  # no clear_refs: sample instead (may miss a short spike)
        with PeakRss() as rss:
            t = await timed_async(fn)
        growth = rss.growth
    else:
        before = _rss_kib("VmRSS")
        t = await timed_async(fn)
        growth = (_rss_kib("VmHWM") - before) * 1024
    if not ballast:
        return Measured(t.seconds, t.cpu_seconds, growth, t.result)
    ticks_after, stolen_after = _cpu_ticks()
    return Measured(
        t.seconds, t.cpu_seconds, growth, t.result, ticks_after - ticks, stolen_after - stolen
    )


def _write_random(path: Path, size: int) -> None:
    chunk = os.urandom(8 << 20)
    with open(path, "wb") as fh:
        while size > 0:
            fh.write(chunk[: min(size, len(chunk))])
            size -= len(chunk)


def _stats(runs: list[Measured], steal: bool) -> dict[str, float]:
    result = stats([r.seconds for r in runs]) | {
        "cpu_median_s": statistics.median(r.cpu_seconds for r in runs),
    }
    if steal:
        ticks = sum(r.ticks for r in runs)
        result["steal_share"] = sum(r.stolen for r in runs) / ticks if ticks else 0.0
    return result


async def _clear(store: ObjectStore) -> None:
    await store.delete([m.key async for m in store.list("")])


async def measure_store(
    label: str,
    store: ObjectStore,
    scratch_dir: Path,
    state,
    state_bytes,
    repeats,
    vm_workarounds: bool = False,
) -> dict:
    """Save / load against raw put_file / get_file of the same byte count, interleaved.

    Each repetition runs all four on an emptied bucket, and the order within a pair flips
    every repetition: on the local store the disk absorbs a burst of writes quickly and then
    slows down, so running all saves first and all raw puts afterwards (or letting objects
    pile up) measures the disk's state rather than the code. With `vm_workarounds` each
    operation starts right after a ballast file of the checkpoint's size is deleted
    (`Ballast`), so that none of them gets memory the hypervisor took back and must fault in
    again, and the host's steal time is sampled.
    """
    scratch = TempScratch(scratch_dir)
    settings = CheckpointSettings(version=VERSION)  # the defaults a neuron runs with
    ck = Checkpointer(store, scratch, SystemClock(), settings)
    # A warm-up save, unmeasured, gives the byte count the raw baseline must move.
    total = (await ck.save(state, CheckpointMeta(window=0, global_step=0, uid=0))).total_bytes
    await _clear(store)
    await asyncio.to_thread(scratch_dir.mkdir, parents=True, exist_ok=True)
    raw_path = scratch_dir / "raw.bin"
    await asyncio.to_thread(_write_random, raw_path, total)
    back = scratch_dir / "raw-back.bin"
    ballast = Ballast(scratch_dir / "ballast.bin", total) if vm_workarounds else None
    runs: dict[str, list[Measured]] = {"save": [], "load": [], "put": [], "get": []}

    async def save(i: int) -> None:
        runs["save"].append(
            await _measured(
                lambda: ck.save(state, CheckpointMeta(window=i, global_step=i, uid=0)), ballast
            )
        )

    async def load(i: int) -> None:
        run = await _measured(lambda: load_checkpoint(store, settings), ballast)
        assert not run.result.fell_back and run.result.window == i
        runs["load"].append(attrs.evolve(run, result=None))

    async def put(i: int) -> None:
        put = lambda: store.put_file(f"raw/{i}.bin", str(raw_path))  # noqa: E731
        runs["put"].append(await _measured(put, ballast))

    async def get(i: int) -> None:
        get = lambda: store.get_file(f"raw/{i}.bin", str(back))  # noqa: E731
        runs["get"].append(await _measured(get, ballast))
        back.unlink()

    for i in range(1, repeats + 1):
        pairs = [(save, put), (load, get)] if i % 2 else [(put, save), (get, load)]
        for first, second in pairs:
            await first(i)
            await second(i)
        await _clear(store)
    raw_path.unlink()
    scratch.close()
    save, load, put, get = (_stats(runs[k], vm_workarounds) for k in ("save", "load", "put", "get"))
    return {
        "store": label,
        "checkpoint_bytes": total,
        "save": save | {"mb_per_s": total / save["min_s"] / 1e6},
        "load": load | {"mb_per_s": total / load["min_s"] / 1e6},
        "raw_put_file": put | {"mb_per_s": total / put["min_s"] / 1e6},
        "raw_get_file": get | {"mb_per_s": total / get["min_s"] / 1e6},
        "save_vs_raw_put": put["min_s"] / save["min_s"],
        "load_vs_raw_get": get["min_s"] / load["min_s"],
        "save_vs_raw_put_median": put["median_s"] / save["median_s"],
        "load_vs_raw_get_median": get["median_s"] / load["median_s"],
        "save_peak_rss_over_state": max(r.peak_growth for r in runs["save"]) / state_bytes,
        "load_peak_rss_over_state": max(r.peak_growth for r in runs["load"]) / state_bytes,
    }


async def _s3_case(root: Path, state, state_bytes, repeats, vm_workarounds) -> dict | None:
    from adapters.storage.s3 import S3StoreOpener
    from adapters.storage.seaweedfs import SeaweedServer, ServerUnavailable, weed_binary

    binary = weed_binary()
    if binary is None:
        return None
    server = SeaweedServer(binary, root / "seaweedfs")
    try:
        await asyncio.to_thread(server.start)
    except ServerUnavailable as exc:
        print(f"S3 skipped: {exc}")
        return None
    opener = S3StoreOpener()
    try:
        name = await asyncio.to_thread(server.create_bucket, "bench")
        store = opener.open(server.bucket(name))
        result = await measure_store(
            "s3 (SeaweedFS, loopback)",
            store,
            root / "s3-scratch",
            state,
            state_bytes,
            repeats,
            vm_workarounds,
        )
        await store.close()
        return result
    finally:
        opener.close()
        server.destroy()


async def _run(quick: bool, s3: bool, vm_workarounds: bool) -> dict:
    state, state_bytes = training_state()
    repeats = 5
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=Path.cwd()) as tmp:
        root = Path(tmp)
        # The default local store (everything through the page cache), then the same store
        # writing objects from 8 MiB with direct I/O (storage_direct_bytes), for comparison;
        # --quick leaves that opt-in store out.
        stores = (("local", None),) if quick else (("local", None), (DIRECT_LABEL, 8 << 20))
        for label, direct in stores:
            local = LocalStoreOpener(root / "buckets", direct_bytes=direct).open(_bucket("local"))
            cases.append(
                await measure_store(
                    label, local, root / "scratch", state, state_bytes, repeats, vm_workarounds
                )
            )
        if s3:
            found = await _s3_case(root, state, state_bytes, repeats, vm_workarounds)
            if found:
                cases.append(found)
    return {
        "benchmark": "checkpoint",
        "state_bytes": state_bytes,
        "quick": quick,
        "repeats": repeats,
        "vm_workarounds": vm_workarounds,
        "machine": machine(),
        "goals": {
            "throughput_vs_raw": GOAL_RATIO,
            "peak_rss_over_state": GOAL_RSS,
            "met": all(
                c["save_vs_raw_put"] >= GOAL_RATIO
                and c["load_vs_raw_get"] >= GOAL_RATIO
                and c["save_peak_rss_over_state"] <= GOAL_RSS
                and c["load_peak_rss_over_state"] <= GOAL_RSS
                for c in cases
                if c["store"] != DIRECT_LABEL
            ),
        },
        "cases": cases,
    }


def run(quick: bool = False, s3: bool = True, vm_workarounds: bool = False) -> dict:
    return asyncio.run(_run(quick, s3, vm_workarounds))


def markdown(result: dict) -> str:
    m = result["machine"]
    vm = result.get("vm_workarounds", True)  # results from before the flag had them on
    ballast = (
        ", each started right after a ballast file of its size was freed (memory the host "
        "still backs; docs/benchmarks.md)"
        if vm
        else ""
    )
    steal_head, steal_rule = (" host steal save / put |", "---|") if vm else ("", "")
    lines = [
        "# Checkpoint benchmark",
        "",
        f"State: {result['state_bytes']:,} tensor bytes (15.7M-parameter model + AdamW moments "
        f"+ scheduler). {m['cpu_count']} CPUs, torch {m['torch']}; best of "
        f"{result['repeats']} runs (median in the JSON){ballast}.",
        "",
        "| store | checkpoint bytes | save MB/s | raw put_file MB/s | save/raw | load MB/s "
        "| raw get_file MB/s | load/raw | peak RSS save / load (x state) "
        f"| CPU ms save / put (median) |{steal_head}",
        f"|---|---|---|---|---|---|---|---|---|---|{steal_rule}",
    ]
    for c in result["cases"]:
        steal = (
            f" {c['save']['steal_share']:.0%} / {c['raw_put_file']['steal_share']:.0%} |"
            if vm
            else ""
        )
        lines.append(
            f"| {c['store']} | {c['checkpoint_bytes']:,} | {c['save']['mb_per_s']:.0f} "
            f"| {c['raw_put_file']['mb_per_s']:.0f} | {c['save_vs_raw_put']:.0%} "
            f"| {c['load']['mb_per_s']:.0f} | {c['raw_get_file']['mb_per_s']:.0f} "
            f"| {c['load_vs_raw_get']:.0%} | {c['save_peak_rss_over_state']:.2f} / "
            f"{c['load_peak_rss_over_state']:.2f} | {c['save']['cpu_median_s'] * 1e3:.0f} / "
            f"{c['raw_put_file']['cpu_median_s'] * 1e3:.0f} |{steal}"
        )
    g = result["goals"]
    steal_note = (
        " Host steal: the share of the machine's CPU time the hypervisor gave to others during "
        "the operations (/proc/stat, 10 ms ticks)."
        if vm
        else ""
    )
    lines += [
        "",
        "CPU: this process's, every thread, kernel time included (not the SeaweedFS server's)."
        + steal_note,
        "",
        f"Goals: save and load >= {g['throughput_vs_raw']:.0%} of raw, peak RSS growth <= "
        f"{g['peak_rss_over_state']}x the state: {'met' if g['met'] else 'NOT met'} (judged on "
        f"the default stores; {DIRECT_LABEL!r} is the opt-in `storage_direct_bytes`, whose raw "
        "put_file is direct too).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    cli = parser(__doc__, "without the opt-in direct I/O store (5 runs either way)")
    cli.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS case")
    vm_workarounds_flag(cli)
    args = cli.parse_args(argv)
    result = run(quick=args.quick, s3=not args.no_s3, vm_workarounds=args.vm_workarounds)
    save(args.out, "checkpoint", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
