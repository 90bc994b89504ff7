"""Activity tracking over time, and publishing / reading peer lists, with in-memory fakes."""

from __future__ import annotations

import asyncio
import json

import pytest

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core import keys
from core.peers import (
    ActivityTracker,
    InvalidPeerList,
    PeerList,
    PeerSettings,
    get_peer_list,
    get_start_window,
    latest,
    parse_peer_list,
    post_peer_list,
    post_start_window,
)
from ports import Bucket, ChainError, Metagraph

V = "1"


def bucket(uid: int) -> Bucket:
    return Bucket(
        name=f"bucket-{uid}", account_id="a", access_key_id=f"k{uid}", secret_access_key="s"
    )


def metagraph(n: int = 6, validators: dict[int, float] | None = None) -> Metagraph:
    validators = validators or {0: 100.0, 1: 50.0}
    return Metagraph(
        block=1,
        uids=range(n),
        hotkeys=[f"hk{u}" for u in range(n)],
        stakes=[validators.get(u, 1.0) for u in range(n)],
        incentives=[0.0] * n,
        validator_permits=[u in validators for u in range(n)],
    )


class ScriptedChain:
    """Just enough of the Chain port for the activity loop."""

    def __init__(self, commitments: dict[int, Bucket], fail_first: int = 0) -> None:
        self.commitments = commitments
        self.fail_first = fail_first
        self.calls = 0

    async def bucket_commitments(self) -> dict[int, Bucket]:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ChainError("node unreachable")
        return dict(self.commitments)


async def test_activity_loop_runs_every_interval_and_survives_chain_errors() -> None:
    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    ps = PeerSettings(active_check_interval=60, recent_windows=2)
    tracker = ActivityTracker(opener, clock, ps, V)
    commitments = {2: bucket(2), 3: bucket(3)}
    await opener.open(bucket(2)).put(keys.gradient(5, 2, V), b"g")
    chain = ScriptedChain(commitments, fail_first=1)
    stop = asyncio.Event()
    windows = iter([5, 7])

    async def current_window() -> int:
        w = next(windows)
        if w == 7:
            stop.set()
        return w

    expired: list[list[int]] = []
    await asyncio.wait_for(tracker.run(chain, current_window, stop, expired.append), 5)
    assert chain.calls == 3  # one failure, then two checks, 60 s apart
    assert clock.monotonic() == pytest.approx(180)
    assert tracker.active_peers == frozenset()  # window 5 is out of the last 2 windows at 7
    assert tracker.inactive_peers == {2: 7}


async def test_inactive_peers_expire_after_reset_inactivity_windows() -> None:
    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    tracker = ActivityTracker(opener, clock, PeerSettings(reset_inactivity_windows=3), V)
    commitments = {4: bucket(4)}
    await opener.open(bucket(4)).put(keys.gradient(10, 4, V), b"g")
    await tracker.check(10, commitments)
    assert tracker.update_peers_with_buckets(10, commitments) == []
    assert tracker.eval_peers == {4: 0}
    await tracker.check(20, commitments)
    assert tracker.update_peers_with_buckets(20, commitments) == []
    assert tracker.inactive_peers == {4: 20}
    assert tracker.update_peers_with_buckets(23, commitments) == []
    assert tracker.update_peers_with_buckets(24, commitments) == [4]
    assert tracker.inactive_peers == {}


async def test_activity_checks_are_bounded_in_concurrency(monkeypatch) -> None:
    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    in_flight = peak = 0
    store_type = type(opener.open(bucket(0)))
    original = store_type.head

    async def slow_head(self, key):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return await original(self, key)

    ps = PeerSettings(activity_concurrency=3)
    tracker = ActivityTracker(opener, clock, ps, V)
    monkeypatch.setattr(store_type, "head", slow_head)
    await tracker.check(3, {u: bucket(u) for u in range(20)})
    assert peak == 3


async def test_peer_list_round_trip_and_fallback_to_older_lists() -> None:
    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    mg = metagraph()
    commitments = {0: bucket(0), 1: bucket(1)}
    store = opener.open(bucket(0))
    old = PeerList(
        window=8,
        first_effective_window=10,
        peers=(2, 3),
        reserves=(4,),
        validator_uid=0,
        hotkey="hk0",
    )
    await post_peer_list(store, old, V)
    assert await get_peer_list(opener, mg, commitments, 9, V) is None  # not yet effective
    assert await get_peer_list(opener, mg, commitments, 10, V) == old
    # A newer list that is corrupt: readers fall back to the previous one.
    await store.put(keys.peers(12, V), b"{not json")
    assert await get_peer_list(opener, mg, commitments, 13, V) == old
    newer = PeerList(
        window=11, first_effective_window=13, peers=(5,), validator_uid=0, hotkey="hk0"
    )
    await post_peer_list(store, newer, V)
    assert await get_peer_list(opener, mg, commitments, 13, V) == newer
    assert await get_peer_list(opener, mg, commitments, 12, V) == old


async def test_highest_stake_validator_wins_and_impostors_are_skipped() -> None:
    opener = MemoryStoreOpener(FakeClock())
    mg = metagraph(validators={0: 10.0, 1: 90.0})
    commitments = {0: bucket(0), 1: bucket(1)}
    mine = PeerList(window=1, first_effective_window=1, peers=(2,), validator_uid=0, hotkey="hk0")
    await post_peer_list(opener.open(bucket(0)), mine, V)
    # uid 1 has more stake, but its list claims another hotkey: skipped, uid 0's list is used.
    forged = PeerList(window=1, first_effective_window=1, peers=(3,), validator_uid=1, hotkey="hk0")
    await post_peer_list(opener.open(bucket(1)), forged, V)
    assert await get_peer_list(opener, mg, commitments, 5, V) == mine
    honest = PeerList(window=1, first_effective_window=1, peers=(4,), validator_uid=1, hotkey="hk1")
    await post_peer_list(opener.open(bucket(1)), honest, V)
    assert await get_peer_list(opener, mg, commitments, 5, V) == honest


async def test_unknown_uids_are_dropped_and_oversized_lists_refused() -> None:
    opener = MemoryStoreOpener(FakeClock())
    mg = metagraph(n=4)
    commitments = {0: bucket(0)}
    pl = PeerList(
        window=1,
        first_effective_window=1,
        peers=(2, 99),
        reserves=(3, 77),
        validator_uid=0,
        hotkey="hk0",
    )
    await post_peer_list(opener.open(bucket(0)), pl, V)
    got = await get_peer_list(opener, mg, commitments, 1, V)
    assert (got.peers, got.reserves) == ((2,), (3,))
    huge = b'{"peers": [' + b"1," * 200_000 + b"1]}"
    await opener.open(bucket(0)).put(keys.peers(2, V), huge)
    await latest.advance(opener.open(bucket(0)), 2, V)  # so that readers try it
    assert await get_peer_list(opener, mg, commitments, 2, V, max_bytes=10_000) == got


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "not a JSON object"),
        ({"schema": 2}, "schema"),
        ({"schema": 1, "version": "0"}, "version"),
        ({"peers": [1, 1]}, "duplicate"),
        ({"peers": [1, True]}, "non-negative"),
        ({"peers": [1], "reserves": [1]}, "both"),
        ({"peers": "1,2"}, "list"),
        ({"window": 5, "first_effective_window": 4}, "before"),
        ({"hotkey": ""}, "hotkey"),
        ({"window": -1}, "non-negative"),
        ({"window": 10**4000, "first_effective_window": 10**4000}, "not JSON|at most"),
        ({"first_effective_window": 2**53}, "at most"),
        ({"peers": [1, 2**16]}, "at most"),
        ({"validator_uid": 2**16}, "at most"),
    ],
)
def test_malformed_peer_lists_are_rejected_with_a_reason(body, reason: str) -> None:
    good = json.loads(
        PeerList(
            window=1,
            first_effective_window=2,
            peers=(1, 2),
            reserves=(3,),
            validator_uid=0,
            hotkey="hk",
        ).to_json(V)
    )
    data = body if isinstance(body, list) else {**good, **body}
    with pytest.raises(InvalidPeerList, match=reason):
        parse_peer_list(json.dumps(data).encode(), V)


def test_a_repeated_key_in_a_peer_list_is_refused_not_the_last_one_winning() -> None:
    good = PeerList(
        window=1, first_effective_window=2, peers=(1,), reserves=(), validator_uid=0, hotkey="hk"
    ).to_json(V)
    twice = good[:-1] + b',"peers":[7]}'  # a second "peers": plain json.loads takes [7]
    with pytest.raises(InvalidPeerList, match="duplicate key"):
        parse_peer_list(twice, V)


async def test_a_start_window_of_4000_digits_or_with_a_repeated_key_is_not_used() -> None:
    opener = MemoryStoreOpener(FakeClock())
    mg, commitments = metagraph(), {0: bucket(0), 1: bucket(1)}
    await post_start_window(opener.open(bucket(1)), 42, "hk1", V)
    body = '{"schema": 1, "version": "%s", "start_window": %s, "hotkey": "hk0"}'
    store = opener.open(bucket(0))  # the highest-stake validator's, tried first
    await store.put(keys.start_window(V), (body % (V, "9" * 4000)).encode())
    assert await get_start_window(opener, mg, commitments, V) == 42
    await store.put(keys.start_window(V), (body % (V, 2**53)).encode())
    assert await get_start_window(opener, mg, commitments, V) == 42
    repeated = body % (V, 5) + ""
    repeated = repeated[:-1] + ', "start_window": 6}'
    await store.put(keys.start_window(V), repeated.encode())
    assert await get_start_window(opener, mg, commitments, V) == 42
    await post_start_window(store, 10**9, "hk0", V)  # far ahead of the reader's window
    assert await get_start_window(opener, mg, commitments, V, not_after=100) == 42


async def test_start_window_round_trip() -> None:
    opener = MemoryStoreOpener(FakeClock())
    mg, commitments = metagraph(), {0: bucket(0), 1: bucket(1)}
    assert await get_start_window(opener, mg, commitments, V) is None
    await post_start_window(opener.open(bucket(1)), 42, "hk1", V)
    assert await get_start_window(opener, mg, commitments, V) == 42
    await opener.open(bucket(0)).put(keys.start_window(V), b"\xff garbage")
    assert await get_start_window(opener, mg, commitments, V) == 42
    await post_start_window(opener.open(bucket(0)), 40, "hk0", V)
    assert await get_start_window(opener, mg, commitments, V) == 40
