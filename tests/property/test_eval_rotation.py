"""The evaluation rotation: every peer that stays eligible is evaluated within the bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core.peers import ActivityTracker, PeerSettings
from core.peers.evaluation import after_evaluation, choose_for_evaluation, rotation_bound
from ports import Bucket


def _bucket(uid: int) -> Bucket:
    return Bucket(name=f"b{uid}", account_id="a", access_key_id="k", secret_access_key="s")


@settings(max_examples=200, deadline=None)
@given(
    uids=st.integers(1, 24),
    per_window=st.integers(1, 6),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_a_continuously_eligible_peer_is_evaluated_within_the_bound(
    uids: int, per_window: int, seed: int, data
) -> None:
    tracker = ActivityTracker(MemoryStoreOpener(FakeClock()), FakeClock(), PeerSettings(), "1")
    windows = data.draw(st.integers(1, 40))
    everyone = list(range(uids))
    subsets = st.lists(st.sampled_from(everyone), unique=True)
    eligible_at = [frozenset(data.draw(subsets)) for _ in range(windows)]
    chosen_at: list[frozenset[int]] = []
    for window, eligible in enumerate(eligible_at):
        tracker.active_peers = eligible
        tracker.update_peers_with_buckets(window, {u: _bucket(u) for u in everyone})
        chosen = tracker.for_evaluation(per_window, window, seed)
        assert set(chosen) <= eligible
        assert len(chosen) == min(per_window, len(eligible))
        tracker.evaluated(chosen)
        chosen_at.append(frozenset(chosen))
    bound = rotation_bound(uids, per_window)
    for start in range(windows - bound + 1):
        stretch = range(start, start + bound)
        for uid in everyone:
            if all(uid in eligible_at[w] for w in stretch):
                assert any(uid in chosen_at[w] for w in stretch), (uid, start, bound)


@given(waits=st.dictionaries(st.integers(0, 50), st.integers(0, 30)), k=st.integers(0, 10))
def test_the_longest_waiting_are_chosen(waits: dict[int, int], k: int) -> None:
    chosen = choose_for_evaluation(waits, k, window=3, seed=1)
    assert len(chosen) == min(k, len(waits)) and len(set(chosen)) == len(chosen)
    rest = set(waits) - set(chosen)
    if chosen and rest:
        assert min(waits[u] for u in chosen) >= max(waits[u] for u in rest)
    assert chosen == choose_for_evaluation(waits, k, window=3, seed=1)  # reproducible


def test_evaluated_peers_start_again_and_the_others_wait_one_more() -> None:
    assert after_evaluation({1: 4, 2: 0, 3: 7}, [3]) == {1: 5, 2: 1, 3: 0}
