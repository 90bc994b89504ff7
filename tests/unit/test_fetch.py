"""The concurrent fetch engine under gather: deadlines, reserves, bounds, streaming."""

from __future__ import annotations

import asyncio

import attrs
import pytest

from adapters.clock import FakeClock
from adapters.storage.chaos import NO_FAULT, ChaosOpener, Fault
from adapters.storage.memory import MemoryStoreOpener
from core.exchange import Exchange, ExchangeSettings, Fetched, Status
from core.fetch import FetchSettings, fetch_peers
from core.windows import TimeWindow
from ports import Bucket

V = "1"
W = 5


def bucket(uid: int) -> Bucket:
    return Bucket(name=f"peer-{uid}", account_id="a", access_key_id="k", secret_access_key="s")


def verdict(got: Fetched) -> Fetched:
    """A consumer's verdict: bytes that start with "bad" are refused."""
    if got.payload.startswith(b"bad"):
        return attrs.evolve(got, status=Status.INVALID, reason="bad_shape: a broken payload")
    return got


class Net:
    def __init__(self, latency: dict[int, float] | None = None) -> None:
        self.clock = FakeClock()
        self.base = MemoryStoreOpener(self.clock)
        latency = latency or {}

        def faults(name: str, op: str, key: str) -> Fault:
            uid = int(name.split("-")[1])
            return Fault(latency=latency[uid]) if uid in latency and op == "get" else NO_FAULT

        opener = ChaosOpener(self.base, self.clock, faults)
        self.me = Exchange(
            self.base.open(bucket(0)),
            opener,
            self.clock,
            V,
            ExchangeSettings(timestamp_resolution=0),
        )
        self.buckets = {u: bucket(u) for u in range(1, 40)}

    async def upload(self, uid: int, data: bytes, window: int = W) -> None:
        await self.base.open(bucket(uid)).put(f"gradient-{window}-{uid}-v{V}.safetensors", data)


async def collect_ok(net: Net, uids, **kw):
    """Consume the stream as gather does; the uids taken, and every try's record."""
    folded: list[int] = []
    async with fetch_peers(net.me, net.buckets, uids, W, **kw) as peers:
        async for got in peers:
            if got.ok:
                outcome = verdict(got)
                if outcome.ok:
                    folded.append(got.uid)
                peers.done(got, outcome)
    return folded, {r.uid: r for r in peers.records}


async def test_mixed_peers_get_the_right_statuses() -> None:
    net = Net()
    await net.upload(1, b"early")
    net.clock.advance(1)
    tw = TimeWindow.after(net.clock.now(), 10)
    await net.upload(2, b"fine")
    await net.upload(3, b"bad payload")
    net.clock.advance(11)
    await net.upload(4, b"late")
    folded, rec = await collect_ok(
        net, [1, 2, 3, 4, 5, 2], time_window=tw, settings=FetchSettings(timeout=30)
    )
    assert folded == [2]
    assert {u: r.status for u, r in rec.items()} == {
        1: Status.TOO_EARLY,
        2: Status.OK,
        3: Status.INVALID,
        4: Status.TOO_LATE,
        5: Status.NOT_FOUND,
    }
    assert rec[3].reason.startswith("bad_shape")
    assert all(r.payload is None for r in rec.values())  # records never keep payloads


async def test_reserves_replace_failures_in_order_up_to_the_requested_count() -> None:
    net = Net()
    tw = TimeWindow.after(net.clock.now(), 10)
    for uid in (1, 3, 11, 13, 14):
        await net.upload(uid, b"ok")
    net.clock.advance(60)  # gathering after the window: missing peers fail at once
    folded, rec = await collect_ok(
        net,
        [1, 2, 3, 4],
        reserve_uids=[10, 11, 12, 13, 14, 3],
        time_window=tw,
        settings=FetchSettings(timeout=5),
    )
    # 2 and 4 fail; 10 (missing) and 11 replace them, 10's failure brings 12 (missing), then 13.
    assert sorted(folded) == [1, 3, 11, 13]
    assert 14 not in rec
    assert sorted(u for u, r in rec.items() if not r.ok) == [2, 4, 10, 12]


async def test_peer_timeout_leaves_time_for_reserves() -> None:
    net = Net()
    await net.upload(7, b"ok")
    folded, rec = await collect_ok(
        net, [1], reserve_uids=[7], settings=FetchSettings(timeout=30, peer_timeout=10)
    )
    assert folded == [7] and rec[1].status is Status.NOT_FOUND
    # The reserve ran at the peer timeout, not the gather's (the peer's timer may tick past
    # it by its 0.5 s slack before it is cancelled).
    assert 10 <= net.clock.monotonic() <= 10.5


async def test_slow_peer_past_the_deadline_is_skipped_and_others_kept() -> None:
    net = Net(latency={3: 100.0})
    for uid in (1, 2, 3):
        await net.upload(uid, b"ok")
    folded, rec = await collect_ok(net, [1, 2, 3], settings=FetchSettings(timeout=30))
    assert sorted(folded) == [1, 2]
    assert rec[3].status is Status.ERROR and rec[3].reason.startswith("timeout")


async def test_peers_without_buckets_and_refused_arrivals_are_skipped() -> None:
    net = Net()
    await net.upload(1, b"ok")
    await net.upload(2, b"ok")
    async with fetch_peers(
        net.me, net.buckets, [1, 2, 99], W, settings=FetchSettings(timeout=1)
    ) as peers:
        yielded = []
        async for got in peers:
            yielded.append((got.uid, got.ok))
            if got.ok:
                refused = attrs.evolve(got, status=Status.ERROR, reason="rejected: shape")
                peers.done(got, refused if got.uid == 2 else got)
    rec = {r.uid: r for r in peers.records}
    assert rec[1].ok and rec[99].reason.startswith("no_bucket")
    assert rec[2].status is Status.ERROR and "shape" in rec[2].reason
    # the stream yields arrivals and fetch failures; the consumer knows its own verdicts
    assert sorted(yielded) == [(1, True), (2, True), (99, False)]


async def test_live_payloads_are_bounded_by_concurrency() -> None:
    net = Net(latency={u: 0.1 * u for u in range(1, 40)})
    for uid in range(1, 40):
        await net.upload(uid, b"x" * 10)
    alive = peak = 0

    async def slow_fold(peers, got) -> None:
        nonlocal alive
        await net.clock.sleep(1.0)
        alive -= 1
        peers.done(got, got)

    async with (
        fetch_peers(
            net.me,
            net.buckets,
            range(1, 40),
            W,
            settings=FetchSettings(concurrency=4, timeout=1000),
        ) as peers,
        asyncio.TaskGroup() as folds,
    ):
        async for got in peers:
            alive += 1
            peak = max(peak, alive)
            folds.create_task(slow_fold(peers, got))
    assert sum(r.ok for r in peers.records) == 39
    assert peak <= 4


@pytest.mark.parametrize(
    ("in_flight", "max_bytes", "slots"),
    [
        (None, 1000, 32),  # no budget: the concurrency
        (4000, None, 32),  # no size bound to divide by
        (4000, 1000, 4),
        (4500, 1000, 4),  # whole payloads only
        (500, 1000, 1),  # a payload over the budget is still fetched, alone
        (10**9, 1000, 32),  # never more than the concurrency
    ],
)
def test_slots_follow_the_in_flight_budget(in_flight, max_bytes, slots) -> None:
    settings = FetchSettings(concurrency=32, max_bytes=max_bytes, in_flight_bytes=in_flight)
    assert settings.slots == slots


async def test_payload_bytes_held_stay_within_the_in_flight_budget() -> None:
    net = Net(latency={u: 0.1 * u for u in range(1, 40)})
    size = 1000
    for uid in range(1, 40):
        await net.upload(uid, b"x" * size)
    held = peak = 0

    async def slow_fold(peers, got) -> None:
        nonlocal held
        await net.clock.sleep(1.0)
        held -= len(got.payload)
        peers.done(got, got)

    settings = FetchSettings(
        concurrency=32, timeout=1000, max_bytes=size, in_flight_bytes=3500, in_flight_hold=1000
    )
    async with (
        fetch_peers(net.me, net.buckets, range(1, 40), W, settings=settings) as peers,
        asyncio.TaskGroup() as folds,
    ):
        async for got in peers:
            held += len(got.payload)
            peak = max(peak, held)
            folds.create_task(slow_fold(peers, got))
    assert sum(r.ok for r in peers.records) == 39
    assert peak == 3 * size  # three whole payloads fit the budget, a fourth does not


@pytest.mark.parametrize("hold", [2.0, None])
async def test_slow_peers_give_their_in_flight_share_back(hold: float | None) -> None:
    slow = {1, 2, 3}  # trickling (or hanging) buckets, first in line for the two shares
    net = Net(latency={u: 1000.0 if u in slow else 0.5 for u in range(1, 11)})
    for uid in range(1, 11):
        await net.upload(uid, b"x" * 1000)
    settings = FetchSettings(
        concurrency=32,
        timeout=30,
        max_bytes=1000,
        in_flight_bytes=2000,
        in_flight_hold=hold if hold is not None else 10**6,
    )
    folded, rec = await collect_ok(net, range(1, 11), settings=settings)
    if hold is None:  # a share held for as long as a fetch runs: the slow ones starve the rest
        assert folded == []
    else:
        assert sorted(folded) == list(range(4, 11))
    assert all(rec[u].reason.startswith("timeout") for u in slow)


async def test_leaving_the_stream_early_cancels_the_rest_cleanly() -> None:
    net = Net()
    for uid in (1, 2, 3):
        await net.upload(uid, b"payload-%d" % uid)
    async with fetch_peers(net.me, net.buckets, [1, 2, 3], W) as peers:
        async for first in peers:
            assert first.ok
            break


@pytest.mark.parametrize("timeout", [0.0, 0.5])
async def test_zero_or_tiny_deadline_never_hangs(timeout: float) -> None:
    net = Net(latency={1: 5.0})
    await net.upload(1, b"ok")
    folded, rec = await collect_ok(net, [1, 2], settings=FetchSettings(timeout=timeout))
    assert folded == [] and set(rec) == {1, 2}


async def test_an_arrival_is_wanted_until_its_verdict() -> None:
    net = Net()
    await net.upload(1, b"ok")
    async with fetch_peers(net.me, net.buckets, [1], W) as peers:
        async for got in peers:
            assert peers.wants(got)
            peers.done(got, got)
            assert not peers.wants(got)
