"""The clock port: domain code never reads the system time directly, so tests never sleep."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, tz-aware UTC (compared with objects' last_modified)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards (for deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a fake clock advances instead of waiting). Negative means 0."""
        ...
