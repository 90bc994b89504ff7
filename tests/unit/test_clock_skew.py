"""Clock offset against the store and the chain, and deadlines kept in the network's time."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.chain.fake import FakeNetwork
from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core import clock_skew
from core.clock_skew import NetworkClock, Offset
from core.exchange import Exchange, ExchangeSettings, Status
from core.keys import KeyKind
from core.windows import TimeWindow
from ports import Bucket

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
offsets = st.floats(min_value=-600, max_value=600, allow_nan=False)
phases = st.floats(min_value=0, max_value=10, allow_nan=False)
rtts = st.floats(min_value=0, max_value=0.5, allow_nan=False)


def bucket(name: str) -> Bucket:
    return Bucket(name=name, account_id="a", access_key_id="w", secret_access_key="s")


def floor_second(when: datetime) -> datetime:
    return when.replace(microsecond=0)


def ahead(clock: FakeClock, seconds: float) -> NetworkClock:
    """A machine clock `seconds` ahead of `clock` (behind when negative)."""
    return NetworkClock(clock, offset=-seconds)


@given(offsets, st.lists(st.tuples(phases, rtts, st.floats(0, 1)), min_size=1, max_size=6))
def test_readings_always_hold_the_true_offset_and_never_overcorrect(true_offset, readings) -> None:
    """A Date header rounded down to the second, read at any point of a request's round trip."""
    found = None
    for phase, rtt, where in readings:
        sent = EPOCH + timedelta(seconds=phase)
        received = sent + timedelta(seconds=rtt)
        at = sent + timedelta(seconds=rtt * where)  # when the server read its clock
        stamp = floor_second(at - timedelta(seconds=true_offset))
        reading = Offset.reading(sent, received, stamp, 1.0, "store")
        assert reading.low <= true_offset + 1e-6 and true_offset - 1e-6 <= reading.high
        found = reading if found is None else found.narrowed(reading)
    assert found.low - 1e-6 <= true_offset <= found.high + 1e-6
    # The correction is the least the evidence forces: same side as the truth, never past it.
    assert abs(found.correction) <= abs(true_offset) + 1e-6
    assert found.correction == 0 or (found.correction > 0) == (true_offset > 0)


def test_a_reading_that_contradicts_the_last_replaces_it() -> None:
    old = Offset(low=4.0, high=5.0, source="store")
    new = Offset(low=-0.5, high=0.5, source="store")  # the reference clock was stepped
    assert old.narrowed(new) == new
    assert new.correction == 0.0 and old.correction == 4.0
    with pytest.raises(ValueError):
        Offset(low=1.0, high=0.0, source="x")


@pytest.mark.parametrize("skew", [-30.0, -3.0, 0.0, 2.5, 40.0])
async def test_store_offset_finds_a_skewed_local_clock(skew: float) -> None:
    network = FakeClock(EPOCH + timedelta(seconds=0.37))
    store = MemoryStoreOpener(network).open(bucket("b"))  # stamps in the network's time
    local = ahead(network, skew)

    found = await clock_skew.store_offset(store, local, resolution=1.0, samples=3)

    assert found is not None and found.low <= skew <= found.high
    assert found.width <= 1.1  # three readings spread over a second
    assert abs(found.correction - skew) <= 1.0


async def test_chain_offset_bounds_the_skew_by_the_block_time() -> None:
    network_time = FakeClock(EPOCH)
    fake = FakeNetwork.in_memory(network_time, block_time=12.0, finality_lag=2)
    network_time.advance(12 * 100 + 5)
    chain = fake.chain("hk")
    honest = await clock_skew.chain_offset(network_time, chain, block_time=12.0)
    assert honest is not None and honest.correction == 0.0
    skewed = await clock_skew.chain_offset(ahead(network_time, 120.0), chain, block_time=12.0)
    assert skewed is not None and skewed.low <= 120.0 <= skewed.high
    assert skewed.correction > 90.0  # a gross skew shows even on the chain's coarse clock


def test_the_store_reading_wins_over_a_disagreeing_chain(caplog) -> None:
    store = Offset(low=2.0, high=3.0, source="store b")
    assert clock_skew.estimate(store, Offset(low=0.0, high=20.0, source="chain")) == Offset(
        low=2.0, high=3.0, source="store b and chain"
    )
    with caplog.at_level(logging.WARNING):
        assert clock_skew.estimate(store, Offset(low=-30, high=-10, source="chain")) == store
    assert "disagree" in caplog.text
    assert clock_skew.estimate(None, store) == store
    assert clock_skew.estimate(None, None) is None


def test_applying_warns_when_the_offset_is_over_a_second(caplog) -> None:
    clock = NetworkClock(FakeClock(EPOCH))
    with caplog.at_level(logging.WARNING):
        clock.apply(Offset(low=-0.4, high=0.6, source="store b"))
    assert clock.offset == 0.0 and not caplog.records
    with caplog.at_level(logging.WARNING):
        clock.apply(Offset(low=3.2, high=3.9, source="store b"))
    assert clock.offset == 3.2 and clock.now() == EPOCH - timedelta(seconds=3.2)
    assert "3.2 s ahead of the network" in caplog.text
    clock.apply(None)  # nothing measured: keep the last correction
    assert clock.offset == 3.2


@pytest.mark.parametrize("corrected", [False, True])
async def test_a_node_whose_clock_runs_ahead_still_waits_for_an_on_time_peer(corrected) -> None:
    """The wait for a missing peer ends at time_window.end + grace in the network's time."""
    network = FakeClock(EPOCH)
    opener = MemoryStoreOpener(network)
    local = NetworkClock(ahead(network, 5.0))
    settings = ExchangeSettings(poll_interval=0.5, grace_seconds=1.0, timestamp_resolution=0)
    me = Exchange(opener.open(bucket("me")), opener, local, "1", settings)
    peer = Exchange(opener.open(bucket("peer")), opener, network, "1")
    if corrected:
        local.apply(await clock_skew.store_offset(me.store, local.local, resolution=0.001))
    tw = TimeWindow.after(network.now(), 10)
    network.advance(7)  # three seconds before the window closes, the peer has not uploaded

    async def upload_soon() -> None:
        await network.sleep(2.5)
        await peer.put(b"grad", 3, KeyKind.GRADIENT, uid=1)

    uploader = asyncio.ensure_future(upload_soon())
    got = await me.get(bucket("peer"), 3, KeyKind.GRADIENT, uid=1, time_window=tw)
    await uploader
    if corrected:
        assert got.status is Status.OK
    else:  # 5 s ahead: it believed the window closed 1 s ago and gave up at once
        assert got.status is Status.NOT_FOUND and got.seconds == 0
