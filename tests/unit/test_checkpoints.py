"""Checkpoints: bit-exact round trip, crash safety, verification and fallback, latest, saver."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import safetensors.torch
import torch

from adapters.clock import FakeClock
from adapters.storage.chaos import NO_FAULT, ChaosStore, Fault
from adapters.storage.memory import MemoryStoreOpener
from core import keys
from core.checkpoints import (
    BackgroundSaver,
    Checkpointer,
    CheckpointMeta,
    CheckpointSettings,
    CheckpointState,
    NoCheckpoint,
    Source,
    VersionRefused,
    checkpoint_due,
    get_latest,
    load_checkpoint,
    load_latest,
    pointer_key,
    validator_sources,
)
from core.checkpoints import save as save_module
from core.checkpoints.shards import ShardError, ShardStream, read_shard, write_shard
from ports import Metagraph, TransientStorageError
from tests.unit.checkpoint_helpers import (
    VERSION,
    assert_same,
    bucket,
    meta,
    setup,
    state_of,
    step,
    trained,
)


def fresh_like():
    """A differently initialised model/optimizer/scheduler of the same architecture."""
    return trained(seed=99, steps=0)


@pytest.mark.parametrize("mode", ["stream", "snapshot"])
async def test_round_trip_is_bit_exact_and_training_continues_identically(
    tmp_path: Path, mode: str
) -> None:
    ck, store, _scratch, cfg, _ = setup(tmp_path, shard_bytes=700)  # several shards per section
    model, opt, sched, mom = trained(steps=3)
    state = state_of(model, opt, sched, mom)
    manifest = await save_by(ck, mode, state, meta(5))
    assert len(manifest.sections["model"].shards) > 1

    loaded = await load_checkpoint(store, cfg)
    assert not loaded.fell_back and loaded.window == 5 and loaded.global_step == 50
    for name, section in state.sections().items():
        assert_same(section, loaded.state.sections()[name])
    assert loaded.state.optimizer["param_groups"][0]["betas"] == (0.9, 0.95)
    assert set(loaded.state.optimizer["state"]) == {0, 1, 2, 3}

    m2, o2, s2, _ = fresh_like()
    m2.load_state_dict(loaded.state.model)
    o2.load_state_dict(loaded.state.optimizer)
    s2.load_state_dict(loaded.state.scheduler)
    mom2 = dict(loaded.state.momentum)
    torch.manual_seed(7)
    step(model, opt, sched, mom)
    step(model, opt, sched, mom)
    torch.manual_seed(7)
    step(m2, o2, s2, mom2)
    step(m2, o2, s2, mom2)
    assert_same(model.state_dict(), dict(m2.state_dict()))
    assert_same(mom, mom2)
    assert sched.get_last_lr() == s2.get_last_lr()


async def test_shards_are_standard_safetensors(tmp_path: Path) -> None:
    ck, store, _, _, _ = setup(tmp_path)
    model, opt, sched, mom = trained()
    manifest = await ck.save(state_of(model, opt, sched, mom), meta(3))
    blob = await store.get(manifest.key(manifest.sections["model"].shards[0]))
    theirs = safetensors.torch.load(blob.data)
    assert_same(
        dict(model.state_dict()),
        {k: theirs[k.removeprefix("model/")] for k in []}
        or {k: theirs[f"model/{k}"] for k in model.state_dict()},
    )
    # ... and our reader takes a file the library wrote
    data = safetensors.torch.save({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(0)})
    tensors, _, _ = read_shard(io.BytesIO(data), size=len(data), max_header_bytes=1 << 16)
    assert torch.equal(tensors["a"], torch.arange(6.0).reshape(2, 3)) and tensors["b"].numel() == 0


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:-1],  # truncated
        lambda d: d + b"x",  # trailing bytes
        lambda d: (10**12).to_bytes(8, "little") + d[8:],  # absurd header length
        lambda d: b"\x80\x04\x95" + d[3:],  # a pickle's first bytes
        lambda d: d[:8] + d[8:].replace(b'"F32"', b'"XYZ"', 1),  # unknown dtype
    ],
)
def test_reader_refuses_malformed_shards(mangle) -> None:
    buf = io.BytesIO()
    write_shard(buf, {"t": torch.arange(4.0)}, {})
    data = mangle(buf.getvalue())
    with pytest.raises(ShardError):
        read_shard(io.BytesIO(data), size=len(data), max_header_bytes=1 << 16)


WRITES = ("put", "put_file", "put_stream")


async def save_by(ck: Checkpointer, mode: str, state: CheckpointState, m: CheckpointMeta):
    """Save the streamed way (`save`) or the background way (`snapshot`, then `publish`)."""
    if mode == "stream":
        return await ck.save(state, m)
    return await (await ck.snapshot(state, m)).publish()


def fail_after(n: int):
    """Faults that let `n` writes (put / put_file / put_stream) through, then fail every write."""
    count = {"writes": 0}

    def faults(op: str, key: str) -> Fault:
        if op not in WRITES:
            return NO_FAULT
        count["writes"] += 1
        if count["writes"] > n:
            return Fault(error_rate=1.0, error=TransientStorageError)
        return NO_FAULT

    return faults


@pytest.mark.parametrize("mode", ["stream", "snapshot"])
async def test_a_crash_after_any_write_leaves_the_previous_checkpoint_loadable(
    tmp_path: Path, mode: str
) -> None:
    clock = FakeClock()
    inner = MemoryStoreOpener(clock).open(bucket())
    ck, _, _scratch, cfg, _ = setup(tmp_path, store=inner, shard_bytes=700)
    model, opt, sched, mom = trained()
    first = copy.deepcopy(state_of(model, opt, sched, mom))
    await ck.save(first, meta(5))
    writes = len([k async for k in inner.list("checkpoints/")])  # files + manifest + pointer
    step(model, opt, sched, mom)
    for n in range(writes):
        chaos = ChaosStore(inner, clock, fail_after(n))
        ck.store = chaos
        with pytest.raises(TransientStorageError):
            await save_by(ck, mode, state_of(model, opt, sched, mom), meta(6))
        loaded = await load_checkpoint(inner, cfg)
        # Only a failure of the very last write (the pointer) leaves window 6 complete.
        expected = 6 if n == writes - 1 else 5
        assert loaded.window == expected, n
        if expected == 5:
            assert_same(first.model, loaded.state.model)
        await inner.delete([keys.checkpoint_manifest(6, 1, VERSION)])


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate", "manifest", "tree"])
async def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, damage) -> None:
    ck, store, _scratch, cfg, _ = setup(tmp_path)
    model, opt, sched, mom = trained()
    good = copy.deepcopy(state_of(model, opt, sched, mom))
    await ck.save(good, meta(5))
    step(model, opt, sched, mom)
    bad = await ck.save(state_of(model, opt, sched, mom), meta(6))
    shard = bad.key(bad.sections["optimizer"].shards[0])
    data = bytearray((await store.get(shard)).data)
    if damage == "flip":
        data[-3] ^= 0x10
        await store.put(shard, bytes(data))
    elif damage == "delete":
        await store.delete([shard])
    elif damage == "truncate":
        await store.put(shard, bytes(data[:-4]))
    elif damage == "manifest":
        await store.put(keys.checkpoint_manifest(6, 1, VERSION), b'{"schema": "nope"}')
    else:
        await store.put(
            bad.key("optimizer.json"), b"[]" + b" " * (bad.file("optimizer.json").size - 2)
        )

    loaded = await load_checkpoint(store, cfg)
    assert loaded.window == 5 and loaded.fell_back
    assert loaded.skipped[0].window == 6
    reason = loaded.skipped[0].reason
    expected = {"flip": "sha256", "delete": "missing", "truncate": "bytes", "manifest": "manifest",
                "tree": "sha256"}[damage]  # fmt: skip
    assert expected in reason, reason
    assert "fell back" in loaded.describe()
    assert_same(good.optimizer, loaded.state.optimizer)


async def test_explicit_window_missing_or_absent_and_nothing_loadable(tmp_path: Path) -> None:
    ck, store, _scratch, cfg, _ = setup(tmp_path)
    with pytest.raises(NoCheckpoint):
        await load_checkpoint(store, cfg)
    model, opt, sched, mom = trained()
    for w in (4, 8):
        await ck.save(state_of(model, opt, sched, mom), meta(w))
    assert (await load_checkpoint(store, cfg, window=4)).window == 4
    loaded = await load_checkpoint(store, cfg, window=7)
    assert loaded.window == 4 and loaded.requested_window == 7 and loaded.fell_back
    with pytest.raises(NoCheckpoint):
        await load_checkpoint(store, cfg, window=3)


async def test_other_versions_are_refused_unless_asked(tmp_path: Path) -> None:
    ck, store, _scratch, _, _ = setup(tmp_path)
    model, opt, sched, mom = trained()
    await ck.save(state_of(model, opt, sched, mom), meta(5))
    newer = CheckpointSettings(version="2.0.0")
    with pytest.raises(NoCheckpoint):
        await load_checkpoint(store, newer)  # v2 sees no v1 objects
    with pytest.raises(VersionRefused):
        await load_checkpoint(store, newer, version=VERSION)
    loaded = await load_checkpoint(store, newer, version=VERSION, allow_other_version=True)
    assert loaded.manifest.version == VERSION


async def test_sizes_are_bounded_before_downloading(tmp_path: Path) -> None:
    clock = FakeClock()
    inner = MemoryStoreOpener(clock).open(bucket())
    ck, _, _, _, _ = setup(tmp_path, store=inner)
    model, opt, sched, mom = trained()
    await ck.save(state_of(model, opt, sched, mom), meta(5))
    chaos = ChaosStore(inner, clock)
    tight = CheckpointSettings(version=VERSION, max_checkpoint_bytes=1000)
    with pytest.raises(NoCheckpoint, match="over 1000"):
        await load_checkpoint(chaos, tight)
    assert not [c for c in chaos.calls if c[0] in ("get_file", "get_stream")]
    with pytest.raises(NoCheckpoint, match="manifest is"):
        await load_checkpoint(inner, CheckpointSettings(version=VERSION, max_manifest_bytes=10))


async def test_resaving_a_window_hides_it_first_and_the_pointer_never_goes_back(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    inner = MemoryStoreOpener(clock).open(bucket())
    chaos = ChaosStore(inner, clock)
    ck, _, _, _, _ = setup(tmp_path, store=chaos)
    model, opt, sched, mom = trained()
    await ck.save(state_of(model, opt, sched, mom), meta(7))
    await ck.save(state_of(model, opt, sched, mom), meta(3))
    pointer = json.loads((await inner.get(pointer_key(VERSION))).data)
    assert pointer["window"] == 7
    chaos.calls.clear()
    await ck.save(state_of(model, opt, sched, mom), meta(7, step=71))
    manifest = keys.checkpoint_manifest(7, 1, VERSION)
    ops = [(op, key) for op, key in chaos.calls if op in ("delete", *WRITES)]
    assert ops[0] == ("delete", manifest)
    assert ops[-2] == ("put", manifest) and ops[-1] == ("put", pointer_key(VERSION))
    assert json.loads((await inner.get(pointer_key(VERSION))).data)["global_step"] == 71


async def test_background_save_snapshots_then_uploads(tmp_path: Path) -> None:
    ck, store, _scratch, cfg, _ = setup(tmp_path)
    model, opt, sched, mom = trained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saver = BackgroundSaver(ck)
    assert await saver.start(state_of(model, opt, sched, mom), meta(5))
    assert saver.busy
    assert not await saver.start(state_of(model, opt, sched, mom), meta(6))  # skipped, not queued
    step(model, opt, sched, mom)  # training goes on while the upload runs
    manifest = await saver.wait()
    assert manifest is not None and manifest.window == 5 and not saver.busy
    loaded = await load_checkpoint(store, cfg)
    assert_same(before, dict(loaded.state.model))
    assert list((tmp_path / "scratch").rglob("*.safetensors*")) == []


async def test_background_save_reports_upload_failures(tmp_path: Path) -> None:
    clock = FakeClock()
    inner = MemoryStoreOpener(clock).open(bucket())
    ck, _, _, _, _ = setup(tmp_path, store=ChaosStore(inner, clock, fail_after(1)))
    saver = BackgroundSaver(ck)
    model, opt, sched, mom = trained()
    await saver.start(state_of(model, opt, sched, mom), meta(5))
    assert await saver.wait() is None
    assert isinstance(saver.last_error, TransientStorageError)


def test_unsupported_state_is_refused_not_pickled() -> None:
    from core.checkpoints.tree import TreeError, join, split

    with pytest.raises(TreeError, match="pickle"):
        split({"f": lambda x: x}, "s")
    value = {1: (2.5, -0.0, float("nan"), float("inf")), "$x": [None, True, "s"], "t": None}
    shared = torch.ones(3)
    value["t"] = {"a": shared, "b": shared}
    tree, tensors = split(value, "s")
    assert len(tensors) == 1
    back = join(json.loads(json.dumps(tree)), tensors)
    assert_same(value, back)
    assert back["t"]["a"] is back["t"]["b"]
    with pytest.raises(TreeError):
        join({"$tensor": "missing"}, {})
    with pytest.raises(TreeError):
        join({"x": 1}, {"unused": torch.ones(1)})


async def test_latest_across_local_and_validator_buckets(tmp_path: Path) -> None:
    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    buckets = {uid: bucket(f"val{uid}") for uid in (1, 2, 3)}
    local = opener.open(bucket("local"))
    model, opt, sched, mom = trained()
    state = state_of(model, opt, sched, mom)
    for store, window in ((local, 9), (opener.open(buckets[2]), 12), (opener.open(buckets[3]), 12)):
        ck, *_ = setup(tmp_path, store=store)
        await ck.save(state, meta(window))
    graph = Metagraph(
        block=0, uids=(1, 2, 3), hotkeys=("a", "b", "c"), stakes=(50.0, 10.0, 30.0),
        incentives=(0, 0, 0), validator_permits=(True, True, True),
    )  # fmt: skip
    sources = validator_sources(graph, buckets, opener, local=local)
    assert [s.label.split(" (")[0] for s in sources] == [
        "local", "validator uid 1", "validator uid 3", "validator uid 2"
    ]  # fmt: skip
    cfg = CheckpointSettings(version=VERSION)
    # Our own store comes first when given: it is the one source we need not trust.
    latest = await get_latest(sources, cfg, current_window=20)
    assert latest is not None and latest.window == 9 and latest.candidate.source == "local"
    # Without it, validators by stake: uid 1 has nothing, uid 3 outranks uid 2.
    sources = sources[1:]
    latest = await get_latest(sources, cfg, current_window=20)
    assert (
        latest is not None
        and latest.window == 12
        and latest.candidate.source.startswith("validator uid 3")
    )
    # Its checkpoint is corrupt in uid 3's bucket: loading falls back to uid 2's copy.
    val3 = opener.open(buckets[3])
    shard = latest.manifest.key(latest.manifest.sections["model"].shards[0])
    data = bytearray((await val3.get(shard)).data)
    data[-1] ^= 1
    await val3.put(shard, bytes(data))
    loaded = await load_latest(sources, cfg, current_window=20)
    assert loaded.window == 12 and loaded.source.startswith("validator uid 2") and loaded.fell_back
    empty = [Source("empty", opener.open(bucket("e")))]
    assert await get_latest(empty, cfg, current_window=20) is None


def test_checkpoint_due() -> None:
    assert [s for s in range(0, 301) if checkpoint_due(s, 100)] == [100, 200, 300]
    with pytest.raises(ValueError):
        checkpoint_due(5, 0)


async def test_concurrent_loads_share_nothing(tmp_path: Path) -> None:
    ck, store, _scratch, cfg, _ = setup(tmp_path)
    model, opt, sched, mom = trained()
    await ck.save(state_of(model, opt, sched, mom), meta(5))
    a, b = await asyncio.gather(load_checkpoint(store, cfg), load_checkpoint(store, cfg))
    assert a.state.model["0.weight"] is not b.state.model["0.weight"]
    assert_same(dict(a.state.model), dict(b.state.model))


async def test_a_shard_streams_hash_is_awaited_not_blocked_on() -> None:
    """`finished()` gives what `written` gives, and refuses a stream not consumed."""
    tensors = {"a": torch.arange(1 << 16, dtype=torch.float32), "b": torch.ones(3)}
    stream = ShardStream(tensors, {})
    with pytest.raises(RuntimeError, match="not consumed"):
        await stream.finished()
    data = b"".join(bytes(piece) for piece in stream)
    written = await stream.finished()
    assert written == stream.written
    assert (written.size, written.sha256) == (len(data), hashlib.sha256(data).hexdigest())


class Recording(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_a_shard_hashed_ahead_on_an_executor_has_the_same_digest() -> None:
    tensors = {"a": torch.arange(1 << 16, dtype=torch.float32), "b": torch.ones(3)}
    with Recording() as pool:
        stream = ShardStream(tensors, {}, hasher=pool)
        assert pool.submitted == 1  # queued at once, before a byte is written
        data = b"".join(bytes(piece) for piece in stream)
        assert (await stream.finished()).sha256 == hashlib.sha256(data).hexdigest()
        # A tensor that would need a host copy is hashed only when the stream is iterated,
        # so that saving a GPU state never holds every shard's copy at once.
        strided = ShardStream({"t": torch.arange(12.0).reshape(3, 4).t()}, {}, hasher=pool)
        assert pool.submitted == 1
        data = b"".join(bytes(piece) for piece in strided)
        assert (await strided.finished()).sha256 == hashlib.sha256(data).hexdigest()


async def test_a_queued_hash_of_a_failed_save_is_dropped() -> None:
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(release.wait)  # the only worker is busy
        stream = ShardStream({"a": torch.ones(8)}, {}, hasher=pool)
        stream.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await stream.finished()


async def test_save_hashes_every_shard_ahead_on_the_shared_pool(
    tmp_path: Path, monkeypatch
) -> None:
    ck, store, _, _, _ = setup(tmp_path, shard_bytes=4096)
    with Recording() as pool:
        monkeypatch.setattr(save_module, "_hash_pool", lambda workers: pool)
        manifest = await ck.save(state_of(*trained()), meta(3))
    shards = sum(len(s.shards) for s in manifest.sections.values())
    assert shards > 2 and pool.submitted == shards
    loaded = await load_checkpoint(store, ck.settings)
    assert loaded.window == 3 and not loaded.fell_back  # every sha256 verified on the way in
