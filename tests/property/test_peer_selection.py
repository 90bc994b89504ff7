"""Peer selection and activity, as hypothesis properties and a stateful machine."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core import keys
from core.peers import ActivityTracker, PeerSettings, Selection, select_peers, weighted_sample
from ports import Bucket

VERSION = "1"
scores = st.dictionaries(
    st.integers(0, 255), st.floats(-1, 10, allow_nan=False), min_size=0, max_size=60
)
peer_settings = st.builds(
    PeerSettings,
    gather_peer_count=st.integers(1, 20),
    reserve_peer_count=st.integers(0, 8),
    minimum_peers=st.just(1),
    peer_replacement_frequency=st.integers(1, 6),
    peers_to_replace=st.integers(0, 4),
)


@given(scores, peer_settings, st.integers(0, 10**6), st.integers(0, 2**32))
def test_selection_is_distinct_bounded_and_only_from_candidates(
    candidates: dict[int, float], ps: PeerSettings, window: int, seed: int
) -> None:
    sel = select_peers(window, candidates, ps, seed=seed)
    if sel is None:
        assert len(candidates) < ps.minimum_peers
        return
    assert len(sel.peers) == min(ps.gather_peer_count, len(candidates))
    assert len(set(sel.peers)) == len(sel.peers)
    assert len(set(sel.reserves)) == len(sel.reserves)
    assert not set(sel.peers) & set(sel.reserves)
    assert set(sel.peers) | set(sel.reserves) <= set(candidates)
    assert len(sel.reserves) == min(ps.reserve_peer_count, len(candidates) - len(sel.peers))
    assert select_peers(window, candidates, ps, seed=seed) == sel  # reproducible


@given(scores, peer_settings, st.integers(0, 10**6), st.integers(0, 2**32))
def test_previous_peers_stay_except_on_replacement_windows(
    candidates: dict[int, float], ps: PeerSettings, window: int, seed: int
) -> None:
    first = select_peers(window, candidates, ps, seed=seed)
    if first is None:
        return
    nxt = select_peers(window + 1, candidates, ps, previous=first, seed=seed)
    assert nxt is not None
    kept = set(first.peers) & set(nxt.peers)
    if (window + 1) % ps.peer_replacement_frequency:
        assert kept == set(first.peers)
    else:
        assert len(kept) >= len(first.peers) - ps.peers_to_replace


def test_minimum_peers_is_respected() -> None:
    ps = PeerSettings(gather_peer_count=5, minimum_peers=3)
    assert select_peers(1, {1: 1.0, 2: 1.0}, ps) is None
    assert select_peers(1, {1: 1.0, 2: 1.0, 3: 0.0}, ps) is not None


def test_replacement_drops_the_worst_peers() -> None:
    ps = PeerSettings(
        gather_peer_count=4,
        minimum_peers=1,
        peers_to_replace=2,
        peer_replacement_frequency=10,
        reserve_peer_count=0,
    )
    cands = {1: 9.0, 2: 8.0, 3: 0.1, 4: 0.2, 5: 5.0, 6: 5.0}
    prev = Selection(window=9, peers=(1, 2, 3, 4), reserves=())
    nxt = select_peers(10, cands, ps, previous=prev)
    assert set(nxt.peers) == {1, 2, 5, 6}
    same = select_peers(11, cands, ps, previous=prev)
    assert same.peers == (1, 2, 3, 4)


def test_higher_scores_are_sampled_more_often() -> None:
    import random

    rng = random.Random(1)
    cands = {0: 10.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    hits = sum(weighted_sample(cands, 1, rng, 0.1)[0] == 0 for _ in range(2000))
    assert hits > 1000  # weight 11 of 15 -> about 73%
    assert all(sorted(weighted_sample(cands, 5, rng, 0.1)) == [0, 1, 2, 3, 4] for _ in range(5))


class ActivityMachine(RuleBasedStateMachine):
    """Uids commit buckets, upload or not; the tracker and selection must follow."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.opener = MemoryStoreOpener(self.clock)
        self.ps = PeerSettings(
            gather_peer_count=4,
            reserve_peer_count=2,
            minimum_peers=1,
            recent_windows=3,
            reset_inactivity_windows=4,
        )
        self.tracker = ActivityTracker(self.opener, self.clock, self.ps, VERSION)
        self.window = 10
        self.buckets: dict[int, Bucket] = {}
        self.uploads: dict[int, set[int]] = {}
        self.previous: Selection | None = None

    def run(self, coro):
        return asyncio.run(coro)

    @rule(uid=st.integers(0, 12))
    def commit(self, uid: int) -> None:
        self.buckets[uid] = Bucket(
            name=f"b{uid}", account_id="a", access_key_id="k", secret_access_key="s"
        )

    @rule(uid=st.integers(0, 12))
    def withdraw(self, uid: int) -> None:
        self.buckets.pop(uid, None)

    @precondition(lambda self: self.buckets)
    @rule(data=st.data())
    def upload(self, data) -> None:
        uid = data.draw(st.sampled_from(sorted(self.buckets)))
        store = self.opener.open(self.buckets[uid])
        self.run(store.put(keys.gradient(self.window, uid, VERSION), b"g"))
        self.uploads.setdefault(uid, set()).add(self.window)

    @rule(n=st.integers(1, 3))
    def advance(self, n: int) -> None:
        self.window += n

    @rule(seed=st.integers(0, 100))
    def check_and_select(self, seed: int) -> None:
        active = self.run(self.tracker.check(self.window, self.buckets))
        self.tracker.update_peers_with_buckets(self.window, self.buckets)
        recent = range(self.window - self.ps.recent_windows + 1, self.window + 1)
        expected = {u for u in self.buckets if self.uploads.get(u, set()) & set(recent)}
        assert active == expected
        assert set(self.tracker.eval_peers) == set(self.buckets) & active
        sel = select_peers(
            self.window, dict.fromkeys(active, 1.0), self.ps, previous=self.previous, seed=seed
        )
        if sel is not None:
            assert set(sel.peers) <= set(self.buckets)  # never a peer without a bucket
            assert len(set(sel.peers)) == len(sel.peers) <= self.ps.gather_peer_count
            assert len(sel.reserves) <= self.ps.reserve_peer_count
            self.previous = sel

    @invariant()
    def eval_and_inactive_are_disjoint(self) -> None:
        assert not set(self.tracker.eval_peers) & set(self.tracker.inactive_peers)


ActivityMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestActivity = ActivityMachine.TestCase


def test_denormal_and_zero_scores_never_divide_by_zero() -> None:
    # Found by hypothesis: 0.1 x 5e-324 underflows to a zero floor.
    rng = random.Random(0)
    for scores, exploration in (({0: 0.0, 1: 5e-324}, 0.1), ({0: 0.0, 1: 1.0}, 0.0)):
        picked = weighted_sample(scores, 1, rng, exploration)
        assert picked == [1]
    assert sorted(weighted_sample({0: 0.0, 1: 0.0}, 2, rng, 0.0)) == [0, 1]
