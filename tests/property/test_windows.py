"""Window arithmetic and time-window classification, including the exact bounds."""

from __future__ import annotations

import math
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


SECOND = timedelta(seconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _floor_second(when: datetime) -> datetime:
    return when.replace(microsecond=0)


def _ceil_second(when: datetime) -> datetime:
    floor = _floor_second(when)
    return floor if floor == when else floor + SECOND


@given(moments, st.floats(min_value=0, max_value=3600, allow_nan=False), moments)
def test_a_truncated_stamp_is_on_time_exactly_for_uploads_between_whole_seconds_inside(
    start: datetime, delta: float, upload: datetime
) -> None:
    """Stores with 1 s Last-Modified: on time iff ceil(t0) <= upload < floor(t1)."""
    tw = TimeWindow.after(start, delta)
    got = classify(_floor_second(upload), tw, resolution=1.0)
    on_time = _ceil_second(tw.start) <= upload < _floor_second(tw.end)
    assert (got is Timing.ON_TIME) == on_time
    if got is Timing.ON_TIME:  # never accepts an upload outside the window
        assert tw.start <= upload <= tw.end
    elif upload < _ceil_second(tw.start):
        assert got is Timing.TOO_EARLY
    else:
        assert got is Timing.TOO_LATE


@given(moments, st.floats(min_value=2, max_value=3600, allow_nan=False))
def test_both_edges_of_a_truncated_window(start: datetime, delta: float) -> None:
    tw = TimeWindow.after(start, delta)
    tick = timedelta(microseconds=1)
    first, last = _ceil_second(tw.start), _floor_second(tw.end) - tick
    assert first <= last  # a window of 2 s or more always has a whole second inside
    for upload, expected in [
        (first, Timing.ON_TIME),
        (last, Timing.ON_TIME),
        (first - tick, Timing.TOO_EARLY),
        (last + tick, Timing.TOO_LATE),
    ]:
        assert classify(_floor_second(upload), tw, resolution=1.0) is expected


@given(moments, deltas, st.floats(min_value=0, max_value=5, allow_nan=False))
def test_a_coarser_resolution_never_turns_a_refusal_into_acceptance(
    start: datetime, delta: float, resolution: float
) -> None:
    tw = TimeWindow.after(start, delta)
    for when in (tw.start, tw.end, tw.start - SECOND, tw.end - SECOND):
        if classify(when, tw) is not Timing.ON_TIME:
            assert classify(when, tw, resolution) is not Timing.ON_TIME
    assert math.isfinite(resolution)


def test_negative_resolution_is_rejected() -> None:
    tw = TimeWindow.after(EPOCH, 10)
    with pytest.raises(ValueError):
        classify(EPOCH, tw, resolution=-1)
