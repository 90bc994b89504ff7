"""Catch-up: a late joiner that loads a checkpoint and replays aggregated windows ends with
exactly the weights of a peer that never left."""

from __future__ import annotations

from pathlib import Path

import torch

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core import codec, keys
from core.checkpoints import (
    CatchUpStatus,
    CheckpointState,
    aggregator_updates,
    catch_up,
    load_checkpoint,
)
from core.compression import default_compressor
from tests.unit.checkpoint_helpers import VERSION, assert_same, bucket, meta, setup


def network_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt


def applier(model, opt):
    params = dict(model.named_parameters())

    def apply(window: int, update) -> None:
        for name, p in params.items():
            p.grad = update[name].to(p.dtype).clone()
        opt.step()

    return apply


async def publish_aggregates(store, shapes, windows) -> None:
    """Synthetic aggregated updates, encoded with the real codec as an aggregator would."""
    compressor = default_compressor()
    gen = torch.Generator().manual_seed(1)
    for w in windows:
        grads = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
        data = codec.encode(
            compressor.encode(grads),
            codec.PayloadMeta(window=w, uid=0, hotkey="agg", global_step=w, version=VERSION),
        )
        await store.put(keys.aggregator(w, VERSION), data)


async def test_late_joiner_matches_the_peer_that_never_left(tmp_path: Path) -> None:
    clock = FakeClock()
    agg_store = MemoryStoreOpener(clock).open(bucket("aggregator"))
    veteran, vopt = network_model()
    shapes = {n: tuple(p.shape) for n, p in veteran.named_parameters()}
    await publish_aggregates(agg_store, shapes, range(1, 9))
    fetch = aggregator_updates(
        agg_store, version=VERSION, compressor=default_compressor(), shapes=shapes
    )
    ck, store, _scratch, cfg, _ = setup(tmp_path)
    apply = applier(veteran, vopt)
    for w in range(1, 9):
        apply(w, await fetch(w))
        if w == 3:
            await ck.save(
                CheckpointState(model=veteran.state_dict(), optimizer=vopt.state_dict()), meta(w)
            )

    torch.manual_seed(123)  # the joiner starts from other weights
    joiner, jopt = network_model()
    loaded = await load_checkpoint(store, cfg)
    joiner.load_state_dict(loaded.state.model)
    jopt.load_state_dict(loaded.state.optimizer)
    result = await catch_up(
        start_window=loaded.window,
        target_window=8,
        sync_max_steps_behind=10,
        fetch=fetch,
        apply=applier(joiner, jopt),
    )
    assert result.status is CatchUpStatus.CAUGHT_UP and result.applied == (4, 5, 6, 7, 8)
    assert set(result.sources.values()) == {"aggregator"}
    assert_same(dict(veteran.state_dict()), dict(joiner.state_dict()))


async def test_too_far_behind_applies_nothing_and_says_why() -> None:
    applied = []
    result = await catch_up(
        start_window=10, target_window=31, sync_max_steps_behind=20,
        fetch=lambda w: None, apply=lambda w, u: applied.append(w),
    )  # fmt: skip
    assert result.status is CatchUpStatus.TOO_FAR_BEHIND and not result.ok and applied == []
    assert "21 windows behind" in result.message and "sync_max_steps_behind=20" in result.message
    up = await catch_up(
        start_window=5, target_window=5, sync_max_steps_behind=1, fetch=None, apply=None
    )
    assert up.status is CatchUpStatus.UP_TO_DATE and up.ok


async def test_missing_or_invalid_aggregates_use_the_fallback_then_stop() -> None:
    clock = FakeClock()
    store = MemoryStoreOpener(clock).open(bucket("aggregator"))
    shapes = {"w": (4, 4)}
    await publish_aggregates(store, shapes, [1, 3])
    await store.put(keys.aggregator(2, VERSION), b"not a payload")
    fetch = aggregator_updates(
        store, version=VERSION, compressor=default_compressor(), shapes=shapes
    )
    gathered = []

    async def gather(window: int):
        gathered.append(window)
        return {"w": torch.zeros(4, 4)} if window == 2 else None

    seen = []

    async def apply(window, update):
        seen.append(window)

    result = await catch_up(
        start_window=0, target_window=6, sync_max_steps_behind=10,
        fetch=fetch, apply=apply, fallback=gather,
    )  # fmt: skip
    assert seen == [1, 2, 3] and gathered == [2, 4]
    assert result.status is CatchUpStatus.INCOMPLETE and result.last_window == 3
    assert result.sources == {1: "aggregator", 2: "fallback", 3: "aggregator"}
    assert "stopped at window 4" in result.message
