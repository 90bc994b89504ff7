"""The janitor keeps exactly what it must: the newest complete checkpoints, fresh objects,
anything it does not recognise; and deletes the rest, boundedly, manifests first."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.clock import FakeClock
from adapters.storage.chaos import ChaosStore
from adapters.storage.memory import MemoryStoreOpener
from core import keys
from core.checkpoints import pointer_key
from core.janitor import RetentionPolicy, sweep, sweep_all
from tests.unit.checkpoint_helpers import VERSION, bucket


async def fake_checkpoint(store, window: int, uid: int = 1, complete: bool = True, version=VERSION):
    """A checkpoint directory with a real manifest; `complete=False` leaves a file out."""
    from core.checkpoints.manifest import FileEntry, Manifest, Section

    files = {"model-00000.safetensors": b"m" * 10, "model.json": b"{}"}
    entries = [FileEntry(n, len(d), "0" * 64) for n, d in files.items()]
    for name, data in files.items():
        if complete or name != "model.json":
            await store.put(keys.checkpoint_file(window, uid, version, name), data)
    section = Section("model.json", ["model-00000.safetensors"])
    manifest = Manifest(
        version=version, window=window, uid=uid, global_step=window, hotkey="",
        created_at=FakeClock().now(), sections={"model": section}, files=entries,
    )  # fmt: skip
    await store.put(keys.checkpoint_manifest(window, uid, version), manifest.to_json())


async def keys_in(store) -> set[str]:
    return {m.key async for m in store.list("")}


async def test_sweep_keeps_what_it_must(tmp_path: Path) -> None:
    clock = FakeClock()
    store = MemoryStoreOpener(clock).open(bucket())
    for w in range(0, 30):
        await store.put(keys.gradient(w, 1, VERSION), b"g")
        await store.put(keys.debug(w, 1, VERSION), b"{}")
    await store.put(keys.aggregator(3, VERSION), b"a")
    await store.put(keys.peers(3, VERSION), b"p")
    await store.put(keys.start_window(VERSION), b"s")
    await store.put("notes/readme.txt", b"mine")
    await store.put(pointer_key(VERSION), b"{}")
    for w in (2, 5, 8, 11):
        await fake_checkpoint(store, w)
    await fake_checkpoint(store, 14, complete=False)  # a failed save, old
    await fake_checkpoint(store, 29, complete=False)  # a save in progress
    await store.put(keys.checkpoint_file(1, 1, VERSION, "model-00000.safetensors"), b"orphan")

    result = await sweep(store, 30, RetentionPolicy(stale_retention=10, keep_checkpoints=2))
    left = await keys_in(store)
    for w in range(30):
        assert (keys.gradient(w, 1, VERSION) in left) == (w >= 20)
        assert (keys.debug(w, 1, VERSION) in left) == (w >= 20)
    for key in (keys.aggregator(3, VERSION), keys.peers(3, VERSION), keys.start_window(VERSION),
                "notes/readme.txt", pointer_key(VERSION)):  # fmt: skip
        assert key in left
    dirs = {keys.parse(k).window for k in left if k.startswith("checkpoints/v") and keys.parse(k)}
    assert dirs == {8, 11, 29}
    assert result.kept_checkpoints == ((VERSION, 8, 1), (VERSION, 11, 1))
    assert not result.more


async def test_never_deletes_the_newest_complete_checkpoint_however_old() -> None:
    store = MemoryStoreOpener(FakeClock()).open(bucket())
    await fake_checkpoint(store, 1)
    await fake_checkpoint(store, 2, complete=False)
    await sweep(store, 1000, RetentionPolicy(stale_retention=0, keep_checkpoints=1))
    left = await keys_in(store)
    assert keys.checkpoint_manifest(1, 1, VERSION) in left
    assert not any(keys.parse(k).window == 2 for k in left)


async def test_bounded_deletes_go_oldest_first_and_manifests_before_files() -> None:
    clock = FakeClock()
    inner = MemoryStoreOpener(clock).open(bucket())
    for w in range(10):
        await fake_checkpoint(inner, w)
    chaos = ChaosStore(inner, clock)
    policy = RetentionPolicy(stale_retention=0, keep_checkpoints=1, max_deletes=4)
    first = await sweep(chaos, 100, policy)
    assert first.more and first.count == 4
    deletes = [key for op, key in chaos.calls if op == "delete"]
    assert deletes[0] == ",".join(
        [keys.checkpoint_manifest(0, 1, VERSION), keys.checkpoint_manifest(1, 1, VERSION)]
    )
    calls = 2
    while (await sweep(chaos, 100, policy)).more:
        calls += 1
    assert calls == 7  # 9 old checkpoints x 3 objects, 4 per call
    assert {keys.parse(k).window for k in await keys_in(inner)} == {9}


async def test_sweep_all_cleans_local_and_remote() -> None:
    opener = MemoryStoreOpener(FakeClock())
    stores = [opener.open(bucket("local")), opener.open(bucket("remote"))]
    for s in stores:
        await s.put(keys.gradient(1, 1, VERSION), b"g")
        await s.put(keys.gradient(2, 1, VERSION), b"g")  # the newest stays, however old
    results = await sweep_all(stores, 50, RetentionPolicy())
    assert [r.deleted for r in results] == [(keys.gradient(1, 1, VERSION),)] * 2


def test_policy_refuses_checkpoints_as_a_plain_kind() -> None:
    with pytest.raises(ValueError):
        RetentionPolicy(kinds={keys.KeyKind.CHECKPOINT})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    checkpoints=st.dictionaries(st.integers(0, 40), st.booleans(), max_size=8),
    gradients=st.sets(st.integers(0, 40), max_size=10),
    current=st.integers(0, 60),
    retention=st.integers(0, 20),
    keep=st.integers(1, 3),
    max_deletes=st.integers(1, 7),
)
async def test_retention_property(checkpoints, gradients, current, retention, keep, max_deletes):
    store = MemoryStoreOpener(FakeClock()).open(bucket())
    for w, complete in checkpoints.items():
        await fake_checkpoint(store, w, complete=complete)
    for w in gradients:
        await store.put(keys.gradient(w, 2, VERSION), b"g")
    policy = RetentionPolicy(
        stale_retention=retention, keep_checkpoints=keep, max_deletes=max_deletes
    )
    for _ in range(100):
        result = await sweep(store, current, policy)
        assert result.count <= max_deletes
        if not result.more:
            break
    cutoff = current - retention
    newest_complete = sorted((w for w, c in checkpoints.items() if c), reverse=True)[:keep]
    expect_dirs = {w for w in checkpoints if w in newest_complete or w >= cutoff}
    left = await keys_in(store)
    dirs = {keys.parse(k).window for k in left if keys.parse(k).kind is keys.KeyKind.CHECKPOINT}
    assert dirs == expect_dirs
    for w in expect_dirs:  # what is kept is kept whole
        assert keys.checkpoint_manifest(w, 1, VERSION) in left
    grads = {keys.parse(k).window for k in left if keys.parse(k).kind is keys.KeyKind.GRADIENT}
    newest = {max(gradients)} if gradients else set()  # never deleted, however old
    assert grads == {w for w in gradients if w >= cutoff} | newest
