"""The janitor and the activity tracker in the templar profile: they act on Templar's
names (and our checkpoints), and leave alone what the profile does not write."""

from __future__ import annotations

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core import keys
from core.janitor import RetentionPolicy, sweep
from core.peers import ActivityTracker, PeerSettings
from core.profiles import TEMPLAR
from tests.unit.checkpoint_helpers import VERSION, bucket
from tests.unit.test_janitor import fake_checkpoint, keys_in

T = TEMPLAR.keys


async def test_the_janitor_sweeps_templars_names_in_the_templar_profile() -> None:
    store = MemoryStoreOpener(FakeClock()).open(bucket())
    for w in range(30):
        await store.put(T.gradient(w, 1, VERSION), b"g")
        await store.put(T.debug(w, 1, VERSION), b"d")
    await store.put(T.start_window(VERSION), b'{"start_window": 0}')
    await store.put(keys.gradient(3, 1, VERSION), b"a native name")
    await store.put("checkpoints/2.1.3/_LATEST.json", b'{"latest_window": 3}')
    for w in (2, 5):
        await fake_checkpoint(store, w)

    policy = RetentionPolicy(stale_retention=10, keep_checkpoints=1, version=VERSION)
    await sweep(store, 30, policy, scheme=T)
    left = await keys_in(store)
    for w in range(30):
        assert (T.gradient(w, 1, VERSION) in left) == (w >= 20)
        assert (T.debug(w, 1, VERSION) in left) == (w >= 20)
    assert T.start_window(VERSION) in left
    assert keys.gradient(3, 1, VERSION) in left  # not the profile's: never ours to delete
    assert "checkpoints/2.1.3/_LATEST.json" in left  # Templar's checkpoint pointer
    assert keys.checkpoint_manifest(5, 1, VERSION) in left  # our checkpoints, kept as ever
    assert keys.checkpoint_manifest(2, 1, VERSION) not in left


async def test_activity_is_a_templar_named_gradient_in_the_recent_windows() -> None:
    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    tracker = ActivityTracker(opener, clock, PeerSettings(recent_windows=2), VERSION, scheme=T)
    await opener.open(bucket("peer-2")).put(T.gradient(9, 2, VERSION), b"g")
    await opener.open(bucket("peer-3")).put(keys.gradient(9, 3, VERSION), b"g")  # native: not seen
    await opener.open(bucket("peer-4")).put(T.gradient(7, 4, VERSION), b"g")  # too old
    commitments = {u: bucket(f"peer-{u}") for u in (2, 3, 4)}
    assert await tracker.check(10, commitments) == frozenset({2})
