"""Window arithmetic and time-window classification.

A window is `blocks_per_window` consecutive blocks: window = block // blocks_per_window. A
payload for window w counts when its object's last_modified lies in the time window
[t0, t0 + time_window_delta_seconds], t0 being the timestamp of w's first block. Both bounds
are inclusive, as in Templar. (The templar protocol profile takes t0 from the first block of
w + 1 instead, as Templar's validators do: `core/profiles.py`.)
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

import attrs


def window_of(block: int, blocks_per_window: int) -> int:
    """The window that `block` belongs to."""
    _check_bpw(blocks_per_window)
    if block < 0:
        raise ValueError(f"block must be >= 0, got {block}")
    return block // blocks_per_window


def first_block(window: int, blocks_per_window: int) -> int:
    """The first block of `window`."""
    _check_bpw(blocks_per_window)
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return window * blocks_per_window


def block_range(window: int, blocks_per_window: int) -> range:
    """All blocks of `window`."""
    start = first_block(window, blocks_per_window)
    return range(start, start + blocks_per_window)


def _check_bpw(blocks_per_window: int) -> None:
    if blocks_per_window <= 0:
        raise ValueError(f"blocks_per_window must be > 0, got {blocks_per_window}")


def _aware(_: object, attribute: attrs.Attribute, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{attribute.name} must be timezone-aware")


class Timing(enum.Enum):
    TOO_EARLY = "too_early"
    ON_TIME = "on_time"
    TOO_LATE = "too_late"


@attrs.frozen
class TimeWindow:
    """The closed interval [start, end] of acceptable upload times."""

    start: datetime = attrs.field(validator=_aware)
    end: datetime = attrs.field(validator=_aware)

    def __attrs_post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"time window ends ({self.end}) before it starts ({self.start})")

    @classmethod
    def after(cls, start: datetime, delta_seconds: float) -> TimeWindow:
        """[start, start + delta_seconds]: the window opened by a block's timestamp."""
        if delta_seconds < 0:
            raise ValueError("time_window_delta_seconds must be >= 0")
        return cls(start=start, end=start + timedelta(seconds=delta_seconds))

    def classify(self, when: datetime, resolution: float = 0.0) -> Timing:
        return classify(when, self, resolution)


def classify(when: datetime, window: TimeWindow, resolution: float = 0.0) -> Timing:
    """Where a stamp `when` (tz-aware), rounded down to `resolution` seconds, falls against
    `window`: on time only if every moment it may stand for, [when, when + resolution), lies
    inside the window."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("cannot classify a naive datetime")
    if resolution < 0:
        raise ValueError(f"resolution must be >= 0, got {resolution}")
    if when < window.start:
        return Timing.TOO_EARLY
    if when + timedelta(seconds=resolution) > window.end:
        return Timing.TOO_LATE
    return Timing.ON_TIME
