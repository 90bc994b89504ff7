from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from adapters.clock import FakeClock, SystemClock


async def test_fake_sleep_advances_instantly_and_concurrent_sleeps_overlap() -> None:
    clock = FakeClock()
    t0, m0 = clock.now(), clock.monotonic()
    await asyncio.gather(*(clock.sleep(1.0) for _ in range(10)))
    assert clock.monotonic() - m0 == pytest.approx(1.0)
    await clock.sleep(2.5)
    assert clock.now() - t0 == timedelta(seconds=3.5)
    await clock.sleep(-5)
    assert clock.monotonic() == pytest.approx(3.5)


def test_fake_clock_never_goes_backwards() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(datetime(2029, 1, 1, tzinfo=UTC))
    clock.set(datetime(2030, 1, 2, tzinfo=UTC))
    assert clock.monotonic() == 86400
    with pytest.raises(ValueError):
        FakeClock(datetime(2030, 1, 1))


def test_system_clock_is_utc() -> None:
    now = SystemClock().now()
    assert now.utcoffset() == timedelta(0)
    assert abs((now - datetime.now(UTC)).total_seconds()) < 5


@pytest.mark.parametrize("rounds", range(FakeClock.SETTLE_ROUNDS - 1))
async def test_a_timeout_cancels_a_longer_sleep_before_time_reaches_it(rounds: int) -> None:
    # The short sleep starts while the long one settles, before its first look at the queue.
    # However far through settling the long one is when the short one wakes, what that
    # waking makes ready (here: the cancel) runs before the long one may move the clock.
    clock = FakeClock()
    long = asyncio.ensure_future(clock.sleep(1e6))
    for _ in range(rounds):
        await asyncio.sleep(0)
    short = asyncio.ensure_future(clock.sleep(2))
    await asyncio.wait({long, short}, return_when=asyncio.FIRST_COMPLETED)
    long.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await long
    assert short.done() and long.cancelled()
    assert clock.monotonic() == 2
