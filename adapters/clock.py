"""Clocks: the system's, and a fake one for tests that must never sleep."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


DEFAULT_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when told to, or when someone sleeps on it.

    `sleep(s)` returns at once, after letting other tasks run, with the clock at least `s`
    past the moment the sleep began. Concurrent sleepers overlap: ten tasks sleeping one
    second each advance the clock by one second, not ten, as they would in real time.
    """

    def __init__(self, start: datetime = DEFAULT_EPOCH) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._start = start.astimezone(UTC)
        self._elapsed = 0.0

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._elapsed += seconds

    def set(self, when: datetime) -> None:
        """Jump to `when`, which must not be in the past."""
        self.advance((when - self.now()).total_seconds())

    async def sleep(self, seconds: float) -> None:
        wake = self._elapsed + max(0.0, seconds)
        await asyncio.sleep(0)
        self._elapsed = max(self._elapsed, wake)
