from __future__ import annotations

import asyncio
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
