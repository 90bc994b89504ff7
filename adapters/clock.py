"""Clocks: the system's, and a fake one for tests that must never sleep."""

from __future__ import annotations

import asyncio
import heapq
import itertools
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

    `sleep(s)` never waits for real. Sleepers wake in order of their wake-up times: the
    earliest one, after letting every ready task run, moves the clock to its wake-up time
    and returns. So concurrent sleeps overlap as in real time (ten tasks sleeping one second
    advance the clock by one second), and a task sleeping 100 s does not drag a task sleeping
    1 s along with it.
    """

    # Event-loop rounds a sleeper lets pass before it may move time, so that tasks made ready
    # by the previous step reach their own sleep (or finish) first.
    SETTLE_ROUNDS = 8

    def __init__(self, start: datetime = DEFAULT_EPOCH) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._start = start.astimezone(UTC)
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int]] = []
        self._seq = itertools.count()
        self._woken = 0  # sleepers woken so far

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
        entry = (self._elapsed + max(0.0, seconds), next(self._seq))
        heapq.heappush(self._sleepers, entry)
        try:
            while True:
                # Settle again whenever another sleeper woke meanwhile: what its waking made
                # ready (a timeout that cancels this very sleep, say) runs before time moves.
                woken = self._woken
                for _ in range(self.SETTLE_ROUNDS):
                    await asyncio.sleep(0)
                if self._sleepers[0] == entry and self._woken == woken:
                    heapq.heappop(self._sleepers)
                    self._elapsed = max(self._elapsed, entry[0])
                    self._woken += 1
                    return
        except BaseException:
            if entry in self._sleepers:
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
            raise
