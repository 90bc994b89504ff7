"""Window arithmetic and time-window classification, including the exact bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.windows import TimeWindow, Timing, block_range, classify, first_block, window_of

bpw = st.integers(min_value=1, max_value=10_000)
blocks = st.integers(min_value=0, max_value=10**12)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
deltas = st.floats(min_value=0, max_value=7 * 86400, allow_nan=False)


@given(blocks, bpw)
def test_every_block_lies_in_its_windows_range(block: int, n: int) -> None:
    w = window_of(block, n)
    assert block in block_range(w, n)
    assert first_block(w, n) <= block < first_block(w + 1, n)
    assert window_of(first_block(w, n), n) == w


@given(st.integers(min_value=0, max_value=10**9), bpw)
def test_window_ranges_tile_the_chain(w: int, n: int) -> None:
    assert block_range(w, n).stop == block_range(w + 1, n).start
    assert len(block_range(w, n)) == n


@pytest.mark.parametrize(("block", "n"), [(-1, 10), (5, 0), (5, -3)])
def test_bad_arguments_are_rejected(block: int, n: int) -> None:
    with pytest.raises(ValueError):
        window_of(block, n)


@given(moments, deltas)
def test_bounds_are_inclusive_and_outside_is_early_or_late(start: datetime, delta: float) -> None:
    tw = TimeWindow.after(start, delta)
    tick = timedelta(microseconds=1)
    assert classify(tw.start, tw) is Timing.ON_TIME
    assert classify(tw.end, tw) is Timing.ON_TIME
    assert classify(tw.start - tick, tw) is Timing.TOO_EARLY
    assert classify(tw.end + tick, tw) is Timing.TOO_LATE


@given(moments, deltas, moments)
def test_classification_agrees_with_the_interval(
    start: datetime, delta: float, when: datetime
) -> None:
    tw = TimeWindow.after(start, delta)
    expected = (
        Timing.TOO_EARLY
        if when < tw.start
        else Timing.TOO_LATE
        if when > tw.end
        else Timing.ON_TIME
    )
    assert tw.classify(when) is expected


@given(moments, deltas)
def test_other_timezones_compare_by_instant(start: datetime, delta: float) -> None:
    from datetime import timezone

    tw = TimeWindow.after(start, delta)
    shifted = tw.start.astimezone(timezone(timedelta(hours=-7)))
    assert classify(shifted, tw) is Timing.ON_TIME


def test_naive_times_and_inverted_windows_are_rejected() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        classify(datetime(2025, 1, 1), TimeWindow.after(start, 10))
    with pytest.raises(ValueError):
        TimeWindow(start=start, end=start - timedelta(seconds=1))
    with pytest.raises(ValueError):
        TimeWindow.after(datetime(2025, 1, 1), 10)
    with pytest.raises(ValueError):
        TimeWindow.after(start, -1)
