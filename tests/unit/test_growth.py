"""What a network writes stays bounded: the janitor deletes boundedly per pass and never the
newest of a kind, a network run for 200 windows holds as many objects as one run for 60, and a
janitor pass costs the same number of requests at window 60 as at window 200."""

from __future__ import annotations

import attrs

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core import keys
from core.janitor import sweep
from core.peers import PeerList, get_peer_list, post_peer_list, post_start_window
from core.retention import ALL_KINDS, RetentionPolicy
from neurons.buckets import local_buckets
from tests.support.counting import CountingStore
from tests.unit.test_janitor import fake_checkpoint
from tests.unit.test_neurons import HP, Net
from tests.unit.test_peers import V, bucket, metagraph

MARGIN = 2
POLICY = RetentionPolicy(
    stale_retention=5, debug_retention=4, peer_list_retention=8, aggregate_retention=13,
    start_window_retention=20, keep_checkpoints=2, max_deletes=50, kinds=ALL_KINDS, version=V,
)  # fmt: skip


def listed(effective: int) -> PeerList:
    return PeerList(
        window=effective - MARGIN, first_effective_window=effective, peers=(2, 3),
        validator_uid=0, hotkey="hk0",
    )  # fmt: skip


async def test_bounded_passes_clear_10000_old_lists_and_keep_the_newest() -> None:
    clock = FakeClock()
    store = CountingStore(MemoryStoreOpener(clock).open(bucket(0)))
    for w in range(10_000):
        await store.inner.put(keys.peers(w, V), b"{}")  # the janitor goes by names alone
    await post_peer_list(store, listed(10_000), V)
    policy = attrs.evolve(POLICY, max_deletes=1000)
    passes = []
    while True:
        store.counts.clear()
        result = await sweep(store, 10**6, policy)  # far later: every list is old
        passes.append(dict(store.counts))
        assert result.count <= 1000 and store.counts["delete"] <= 1
        if not result.more:
            break
    assert len(passes) == 10  # 10,000 lists, 1,000 a pass
    store.counts.clear()
    assert (await sweep(store, 10**6, policy)).count == 0
    assert store.counts == {"list": 1}
    left = {m.key async for m in store.list("")}
    assert left == {keys.peers(10_000, V), keys.peers_latest(V)}  # the newest, however old
    assert await get_peer_list(_opener(store), metagraph(), {0: bucket(0)}, 10**6, V) is not None


def _opener(store):
    class One:
        def open(self, _bucket):
            return store

    return One()


class Network:
    """A validator (own bucket + aggregator bucket) and three miners, on the memory store."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        opener = MemoryStoreOpener(self.clock)
        self.validator = CountingStore(opener.open(bucket(0)))
        self.aggregates = CountingStore(opener.open(bucket(100)))
        self.miners = {u: CountingStore(opener.open(bucket(u))) for u in (1, 2, 3)}
        self.stores = [self.validator, self.aggregates, *self.miners.values()]

    async def window(self, w: int) -> tuple[list[int], list[int]]:
        """Publish what window `w` publishes, sweep; (objects, requests) per bucket."""
        self.clock.advance(84.0)
        for uid, store in self.miners.items():
            await store.put(keys.gradient(w, uid, V), b"g")
            await store.put(keys.debug(w, uid, V), b"{}")
        if w == 0:
            await post_start_window(self.validator, 0, "hk0", V)
            # A release this bucket ran before: its start window and last list.
            await self.validator.put(keys.start_window("0"), b"{}")
            await self.validator.put(keys.peers(0, "0"), b"{}")
        await post_peer_list(self.validator, listed(w + MARGIN), V)
        await self.aggregates.put(keys.aggregator(w, V), b"a")
        if w % 10 == 0:
            await fake_checkpoint(self.validator, w, uid=0, version=V)
        requests = []
        for store in self.stores:
            store.counts.clear()
            await sweep(store, w, POLICY)
            requests.append(store.requests())
        objects = [len([m async for m in s.inner.list("")]) for s in self.stores]
        return objects, requests


async def test_a_network_of_200_windows_keeps_a_bounded_number_of_objects() -> None:
    net = Network()
    history = [await net.window(w) for w in range(200)]
    objects = [o for o, _ in history]
    requests = [r for _, r in history]
    # Bounds from the policy alone, not from the number of windows run:
    peer_lists = POLICY.peer_list_retention + MARGIN + 1  # effective windows w-8 .. w+2
    checkpoint_dirs = POLICY.keep_checkpoints + 1  # + one younger than stale_retention
    validator = peer_lists + 1 + 1 + 1 + 3 * checkpoint_dirs  # pointer, 2 start windows/list
    aggregates = POLICY.aggregate_retention + 1
    miner = POLICY.stale_retention + 1 + POLICY.debug_retention + 1
    bound = [validator, aggregates, miner, miner, miner]
    for w, counts in enumerate(objects):
        assert all(c <= b for c, b in zip(counts, bound, strict=True)), (w, counts, bound)
    assert max(map(max, objects[60:])) == max(map(max, objects[30:60]))
    # The old release's start window went once it had been quiet for 20 windows; its newest
    # list stays (one straggler per kind and version).
    left = {m.key async for m in net.validator.inner.list("")}
    assert keys.start_window("0") not in left and keys.peers(0, "0") in left
    assert keys.start_window(V) in left
    # Per-pass requests: one listing page, the kept checkpoints' manifests, at most 2 deletes.
    per_pass = [max(r) for r in requests]
    assert max(per_pass[60:]) == max(per_pass[30:60]) <= 1 + POLICY.keep_checkpoints + 2
    assert [r[2:] for r in requests[30:]] == [[2, 2, 2]] * 170  # miners: a list and a delete


async def test_the_validator_sweeps_its_own_bucket_and_its_aggregator_bucket(tmp_path) -> None:
    hparams = attrs.evolve(
        HP, checkpoint_frequency=2, sync_max_steps_behind=1, peer_list_retention=2
    )
    net = Net(tmp_path, miners=2, hparams=hparams)
    await net.run(9)
    last = net.validator.last_window
    aggregates = net.opener.open(local_buckets("val", with_aggregator=True).aggregator_write)
    kept = sorted([keys.parse(m.key).window async for m in aggregates.list("aggregator-")])
    assert kept == list(range(last - 3, last + 1))  # 0: checkpoint_frequency + sync_max_...
    lists = sorted(
        [p.window async for m in net.validator.store.list("peers-") if (p := keys.parse(m.key))]
    )
    margin = hparams.peer_list_window_margin
    assert lists == list(range(last - 2, last + margin + 1))
    assert await net.validator.store.head(keys.peers_latest(hparams.version)) is not None
    assert await net.validator.store.head(keys.start_window(hparams.version)) is not None
