"""Hostile validators against a late joiner's checkpoint choice (issue 19).

Every validator may publish anything in its own bucket. A joiner must never adopt a
checkpoint from the future, must prefer what the high-stake validators publish, and must
treat every failure of a candidate (reading it or applying it) as a skip with a reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

import attrs
import pytest
import torch

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core.checkpoints import (
    CheckpointMeta,
    CheckpointSettings,
    CheckpointState,
    Manifest,
    NoCheckpoint,
    expected_layout,
    get_latest,
    load_checkpoint,
    load_into,
    load_latest,
    validator_sources,
)
from core.checkpoints.shards import ShardError, read_shard
from neurons.sync import load_network_checkpoint
from neurons.task import Training
from ports import Metagraph, ObjectStore
from tests.unit.checkpoint_helpers import VERSION, bucket, setup

HUGE = 10**12


def tiny(seed: int, width: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Linear(width, 2))


def training_of(model: torch.nn.Module) -> Training:
    """`model` with a neuron's outer optimizer and scheduler."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return Training(task=None, model=model, optimizer=optimizer, scheduler=scheduler)


def graph(stakes: dict[int, float]) -> Metagraph:
    uids = tuple(stakes)
    return Metagraph(
        block=0, uids=uids, hotkeys=tuple(f"hk{u}" for u in uids),
        stakes=tuple(stakes.values()), incentives=(0.0,) * len(uids),
        validator_permits=(True,) * len(uids),
    )  # fmt: skip


class Net:
    """Validators with their own buckets in one in-memory world."""

    def __init__(self, tmp_path: Path, stakes: dict[int, float]) -> None:
        self.tmp_path = tmp_path
        self.opener = MemoryStoreOpener(FakeClock())
        self.graph = graph(stakes)
        self.buckets = {uid: bucket(f"val{uid}") for uid in stakes}
        self.cfg = CheckpointSettings(version=VERSION)
        self.shards: dict = {}

    def store(self, uid: int) -> ObjectStore:
        return self.opener.open(self.buckets[uid])

    async def publish(self, uid: int, window: int, model: torch.nn.Module, **state) -> Manifest:
        """A validator's full checkpoint of `model` (optimizer and scheduler as a neuron's)."""
        ck, *_ = setup(self.tmp_path, store=self.store(uid), **self.shards)
        meta = CheckpointMeta(window=window, global_step=window, uid=uid, hotkey=f"hk{uid}")
        training = training_of(model)
        state = {
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            **state,
        }
        return await ck.save(CheckpointState(model=model.state_dict(), **state), meta)

    async def bogus(self, uid: int, window: int) -> None:
        """A manifest that parses and whose files are listed, but whose shard is garbage."""
        manifest = await self.publish(uid, window, tiny(0))
        store = self.store(uid)
        shard = manifest.sections["model"].shards[0]
        size = manifest.file(shard).size
        await store.put(manifest.key(shard), b"\x00" * size)

    def sources(self):
        return validator_sources(self.graph, self.buckets, self.opener)

    async def load(self, current_window: int, **kw):
        return await load_latest(self.sources(), self.cfg, current_window=current_window, **kw)

    async def join(self, model: torch.nn.Module, current_window: int):
        """What a late joiner's setup does (neurons/sync.py)."""
        return await load_network_checkpoint(
            training_of(model),
            metagraph=self.graph,
            commitments=self.buckets,
            opener=self.opener,
            settings=self.cfg,
            current_window=current_window,
        )


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# 1. Nothing from the future ----------------------------------------------------------


async def test_a_checkpoint_ahead_of_the_chain_is_never_adopted(tmp_path: Path) -> None:
    """A stake-1 validator's valid checkpoint at window 10^12 (weights 1e30) is refused:
    adopting it would make the joiner wait for window 10^12 + 1 forever."""
    net = Net(tmp_path, {1: 1000.0, 9: 1.0})
    honest = tiny(1)
    await net.publish(1, 40, honest)
    hostile = tiny(2)
    with torch.no_grad():
        for p in hostile.parameters():
            p.fill_(1e30)
    await net.publish(9, HUGE, hostile)

    loaded = await net.load(current_window=50)
    assert loaded.window == 40 and loaded.source.startswith("validator uid 1 ")
    latest = await get_latest(net.sources(), net.cfg, current_window=50)
    assert latest is not None and latest.window == 40

    # Even alone, the future checkpoint is no candidate at all.
    alone = Net(tmp_path, {9: 1.0})
    await alone.publish(9, HUGE, hostile)
    with pytest.raises(NoCheckpoint) as err:
        await alone.load(current_window=50)
    assert any(
        s.source.startswith("validator uid 9 ") and "ahead of the chain" in s.reason
        for s in err.value.skipped
    )
    assert await get_latest(alone.sources(), alone.cfg, current_window=50) is None


async def test_the_joiner_passes_the_chains_window_to_the_checkpoint_choice(
    tmp_path: Path,
) -> None:
    net = Net(tmp_path, {1: 1000.0, 9: 1.0})
    await net.publish(1, 40, tiny(1))
    await net.publish(9, HUGE, tiny(2))
    model = tiny(3)
    got = await net.join(model, current_window=50)
    assert got == (40, 40) and same_weights(model, tiny(1))


# 2. Stake first, bounded tries per validator -------------------------------------------


async def test_stake_outranks_a_newer_window(tmp_path: Path) -> None:
    """The network's agreed state is what its high-stake validators publish: a small
    validator's newer (and not future) checkpoint does not win."""
    net = Net(tmp_path, {1: 1000.0, 2: 500.0, 9: 1.0})
    await net.publish(1, 30, tiny(1))
    await net.publish(1, 20, tiny(4))
    await net.publish(2, 35, tiny(5))
    await net.publish(9, 49, tiny(2))
    loaded = await net.load(current_window=50)
    assert (loaded.window, loaded.manifest.uid, loaded.fell_back) == (30, 1, False)


@pytest.mark.parametrize(
    ("hostile_stake", "windows"),
    [
        (1.0, [HUGE + i for i in range(9)]),  # the smallest validator, from the future
        (1.0, list(range(41, 50))),  # the smallest validator, newest windows
        (5000.0, list(range(41, 50))),  # the largest validator, nine broken manifests
        (5000.0, list(range(10, 60))),  # ... fifty of them, some in the future
    ],
)
async def test_bogus_manifests_cannot_hide_an_honest_checkpoint(
    tmp_path: Path, hostile_stake: float, windows: list[int]
) -> None:
    net = Net(tmp_path, {1: 1000.0, 9: hostile_stake})
    honest = tiny(1)
    await net.publish(1, 40, honest)
    for window in windows:
        await net.bogus(9, window)

    loaded = await net.load(current_window=50)
    assert loaded.window == 40 and loaded.source.startswith("validator uid 1 ")
    tried_hostile = [s for s in loaded.skipped if s.uid == 9 and s.window is not None]
    assert len(tried_hostile) <= net.cfg.max_per_source
    assert all(s.window <= 50 for s in tried_hostile)


async def test_each_validator_has_a_bounded_number_of_tries(tmp_path: Path) -> None:
    net = Net(tmp_path, {1: 1000.0, 2: 500.0})
    for window in range(10, 20):
        await net.bogus(1, window)
    await net.publish(2, 5, tiny(1))
    loaded = await net.load(current_window=50)
    assert loaded.window == 5
    assert [s.window for s in loaded.skipped] == [19, 18, 17]  # uid 1's newest three only


# 3. Every failure is a skip with its reason ---------------------------------------------


def _shard_with(entries: dict[str, dict], data: bytes = b"") -> bytes:
    raw = json.dumps(entries).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def test_a_shard_shape_torch_cannot_allocate_is_a_shard_error() -> None:
    for shape in ([0, 2**63], [2**62, 2**62, 0], [0] + [2**40] * 3):
        data = _shard_with({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
        with pytest.raises(ShardError, match="shape"):
            read_shard(io.BytesIO(data), size=len(data), max_header_bytes=1 << 16)


async def _replace_shard(
    store: ObjectStore, manifest: Manifest, data: bytes, index: int = 0
) -> None:
    """Swap a model shard for `data`, with a manifest that names its size and sha256."""
    name = manifest.sections["model"].shards[index]
    await store.put(manifest.key(name), data)
    files = [
        attrs.evolve(f, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        if f.name == name
        else f
        for f in manifest.files
    ]
    fixed = attrs.evolve(manifest, files=files)
    await store.put(manifest.key("manifest.json"), fixed.to_json())


async def test_an_unallocatable_shard_shape_falls_back_to_the_previous_checkpoint(
    tmp_path: Path,
) -> None:
    """`[0, 2**63]` made torch.empty raise TypeError out of load_checkpoint."""
    net = Net(tmp_path, {1: 1000.0})
    store = net.store(1)
    await net.publish(1, 5, tiny(1))
    newer = await net.publish(1, 6, tiny(2))
    entries = {"model/x": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}
    await _replace_shard(store, newer, _shard_with(entries))

    loaded = await load_checkpoint(store, net.cfg)
    assert loaded.window == 5 and [s.window for s in loaded.skipped] == [6]
    assert "shape" in loaded.skipped[0].reason


async def test_any_exception_while_reading_a_candidate_is_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.checkpoints import load as load_module

    net = Net(tmp_path, {1: 1000.0, 2: 10.0})
    await net.publish(1, 7, tiny(1))
    await net.publish(2, 6, tiny(2))
    real = load_module.read_shard

    def flaky(fh, *, size, **kw):
        tensors, meta, sha = real(fh, size=size, **kw)
        if tensors["model/0.weight"].shape == (4, 3) and torch.equal(
            tensors["model/0.weight"], tiny(1).state_dict()["0.weight"]
        ):
            raise RuntimeError("unexpected failure deep in a reader")
        return tensors, meta, sha

    monkeypatch.setattr(load_module, "read_shard", flaky)
    loaded = await net.load(current_window=10)
    assert (loaded.window, loaded.manifest.uid) == (6, 2)
    (skip,) = loaded.skipped
    assert (skip.window, skip.uid) == (7, 1) and "RuntimeError" in skip.reason
    assert skip.source.startswith("validator uid 1 ")


async def test_a_checkpoint_of_another_model_is_skipped_and_the_next_one_applied(
    tmp_path: Path,
) -> None:
    """load_state_dict raised in neurons/sync.py and killed the joiner's setup."""
    net = Net(tmp_path, {1: 1000.0, 2: 500.0, 3: 10.0})
    await net.publish(1, 9, tiny(1, width=5))  # another architecture
    await net.publish(2, 8, tiny(1).double())  # same shapes, other dtype
    honest = tiny(7)
    await net.publish(3, 7, honest)

    model = tiny(3)
    got = await net.join(model, current_window=10)
    assert got == (7, 7) and same_weights(model, honest)


async def test_no_fitting_checkpoint_leaves_the_model_untouched(tmp_path: Path) -> None:
    net = Net(tmp_path, {1: 1000.0, 2: 500.0})
    await net.publish(1, 9, tiny(1, width=5))
    broken = tiny(1)
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    await net.publish(2, 8, broken)

    model, before = tiny(3), tiny(3)
    got = await net.join(model, current_window=10)
    assert got is None and same_weights(model, before)


def test_a_failure_half_way_through_applying_restores_the_model() -> None:
    model, before, other = tiny(3), tiny(3), tiny(1)
    real = model.load_state_dict

    def half_then_fail(state, strict=True, assign=False):
        with torch.no_grad():
            model[0].weight.copy_(state["0.weight"])
        raise RuntimeError("device lost")

    model.load_state_dict = half_then_fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="device lost"):
        load_into(model, other.state_dict())
    assert same_weights(model, before)
    model.load_state_dict = real  # type: ignore[method-assign]
    load_into(model, other.state_dict())
    assert same_weights(model, other)


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (lambda m: {k: v for k, v in m.items() if k != "1.bias"}, "missing"),
        (lambda m: {**m, "extra": torch.ones(1)}, "unexpected"),
        (lambda m: {**m, "0.weight": torch.ones(3, 4)}, "shape"),
        (lambda m: {**m, "0.bias": m["0.bias"].half()}, "dtype"),
        (lambda m: {**m, "0.bias": torch.full((4,), float("inf"))}, "finite"),
        (lambda m: {**m, "0.bias": [1.0] * 4}, "not a tensor"),
    ],
)
def test_a_state_that_does_not_fit_is_refused_before_anything_is_copied(state, reason) -> None:
    model, before = tiny(3), tiny(3)
    with pytest.raises(ValueError, match=reason):
        load_into(model, state(tiny(1).state_dict()))
    assert same_weights(model, before)


async def test_another_models_checkpoint_is_refused_from_its_shard_headers(
    tmp_path: Path,
) -> None:
    """With the model's layout, a wrong checkpoint is refused before its tensors download."""
    net = Net(tmp_path, {1: 1000.0, 2: 10.0})
    await net.publish(1, 9, tiny(1, width=5))
    await net.publish(2, 8, tiny(7))
    loaded = await net.load(current_window=10, expect_model=expected_layout(tiny(3)))
    assert (loaded.window, loaded.manifest.uid) == (8, 2)
    (skip,) = loaded.skipped
    assert skip.uid == 1 and "the model's torch.float32 [4, 3]" in skip.reason


# Bounded work per source ---------------------------------------------------------------


async def test_a_bucket_stuffed_with_objects_is_skipped_whole(tmp_path: Path) -> None:
    net = Net(tmp_path, {1: 1000.0, 2: 10.0})
    net.cfg = attrs.evolve(net.cfg, max_listed_objects=50)
    for window in range(20):
        await net.publish(1, window, tiny(1))  # 3 objects each
    await net.publish(2, 8, tiny(7))
    loaded = await net.load(current_window=30)
    assert (loaded.window, loaded.manifest.uid) == (8, 2)
    (skip,) = loaded.skipped
    assert skip.window is None and "more than 50 checkpoint objects" in skip.reason


async def test_a_bucket_the_opener_refuses_costs_only_its_own_source(tmp_path: Path) -> None:
    net = Net(tmp_path, {1: 1000.0, 2: 10.0})
    await net.publish(2, 8, tiny(7))
    real_open = net.opener.open

    def picky(bucket):
        if bucket.name == "val1":
            raise ValueError("refused")
        return real_open(bucket)

    net.opener.open = picky  # type: ignore[method-assign]
    assert [s.label.split(" (")[0] for s in net.sources()] == ["validator uid 2"]
    loaded = await net.load(current_window=10)
    assert (loaded.window, loaded.manifest.uid) == (8, 2)


async def test_a_model_split_twice_over_its_shards_is_refused_from_the_headers(
    tmp_path: Path,
) -> None:
    """Every shard may hold every tensor of the model: bounded only by the manifest, the
    allocation would be shards x the model. Each tensor counts once, from the headers."""
    net = Net(tmp_path, {1: 1000.0, 2: 10.0})
    net.shards = {"shard_bytes": 40}  # one tensor a shard
    store = net.store(1)
    manifest = await net.publish(1, 9, tiny(1))
    assert len(manifest.sections["model"].shards) > 1
    first = (await store.get(manifest.key(manifest.sections["model"].shards[0]))).data
    await _replace_shard(store, manifest, first, index=1)
    await net.publish(2, 8, tiny(7))

    loaded = await net.load(current_window=10, expect_model=expected_layout(tiny(3)))
    assert (loaded.window, loaded.manifest.uid) == (8, 2)
    (skip,) = loaded.skipped
    assert "safetensors: tensor 'model/0.weight' appears in two shards" in skip.reason


async def test_a_joiner_downloads_only_the_model_section(tmp_path: Path) -> None:
    """Whatever else a manifest lists (here a garbage optimizer shard) is never read."""
    net = Net(tmp_path, {1: 1000.0})
    honest = tiny(1)
    extra = {"momentum": {"m": torch.ones(64)}}
    manifest = await net.publish(1, 9, honest, **extra)
    shard = manifest.sections["momentum"].shards[0]
    await net.store(1).put(manifest.key(shard), b"\x00" * manifest.file(shard).size)

    with pytest.raises(NoCheckpoint, match="momentum"):
        await net.load(current_window=10)
    loaded = await net.load(current_window=10, sections=("model",))
    assert not loaded.fell_back and loaded.state.momentum is None
    model = tiny(3)
    assert await net.join(model, current_window=10) == (9, 9)
    assert same_weights(model, honest)
