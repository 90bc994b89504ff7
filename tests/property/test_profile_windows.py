"""Time windows of both protocol profiles, at both edges.

Native: window w's gradients count within [t(first block of w), + delta]. Templar: within
[t(first block of w + 1), + delta], judged on the store's reported stamp as it is (Templar's
validators compare Last-Modified with `<` and `>`: both edges inclusive)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from core.profiles import NATIVE, TEMPLAR
from core.windows import Timing, classify, first_block

GENESIS = datetime(2025, 1, 1, tzinfo=UTC)
TICK = timedelta(microseconds=1)

windows = st.integers(min_value=0, max_value=10**5)  # block stamps stay within datetime
bpws = st.integers(min_value=1, max_value=1000)
block_times = st.floats(min_value=0.5, max_value=60, allow_nan=False)
deltas = st.floats(min_value=0, max_value=3600, allow_nan=False)


def stamp(block: int, block_time: float) -> datetime:
    """A chain whose blocks come every `block_time` seconds."""
    return GENESIS + timedelta(seconds=block * block_time)


@given(windows, bpws, block_times, deltas)
def test_both_edges_of_each_profiles_time_window(
    w: int, bpw: int, block_time: float, delta: float
) -> None:
    for prof, opening in ((NATIVE, w), (TEMPLAR, w + 1)):
        anchor = prof.anchor_block(w, bpw)
        assert anchor == first_block(opening, bpw)
        tw = prof.time_window(stamp(anchor, block_time), delta)
        assert classify(tw.start, tw) is Timing.ON_TIME
        assert classify(tw.end, tw) is Timing.ON_TIME
        assert classify(tw.start - TICK, tw) is Timing.TOO_EARLY
        assert classify(tw.end + TICK, tw) is Timing.TOO_LATE


@given(windows, bpws, block_times, deltas)
def test_an_upload_during_its_own_window_is_too_early_for_templar(
    w: int, bpw: int, block_time: float, delta: float
) -> None:
    """What the native profile accepts at its opening, Templar's validators refuse."""
    native_open = stamp(NATIVE.anchor_block(w, bpw), block_time)
    tw = TEMPLAR.time_window(stamp(TEMPLAR.anchor_block(w, bpw), block_time), delta)
    assert classify(native_open, tw) is Timing.TOO_EARLY
    last_block_of_w = stamp(first_block(w + 1, bpw) - 1, block_time)
    assert classify(last_block_of_w, tw) is Timing.TOO_EARLY


@given(
    st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(min_value=1, max_value=600),
    st.floats(min_value=0.001, max_value=0.999),
)
def test_templar_judges_the_reported_whole_second_stamp_as_it_is(
    opened: datetime, delta: int, fraction: float
) -> None:
    """S3 and R2 report whole seconds. A stamp of the second before a time window ending at
    a fraction of a second is on time for Templar's validators, so for the templar profile;
    the native profile counts the rounding and calls it late."""
    tw = TEMPLAR.time_window(opened, delta + fraction)
    reported = (tw.end - timedelta(seconds=fraction)).replace(microsecond=0)
    reported = max(reported, tw.start)
    assert TEMPLAR.timestamp_resolution(1.0) == 0.0
    assert NATIVE.timestamp_resolution(1.0) == 1.0
    assert classify(reported, tw, TEMPLAR.timestamp_resolution(1.0)) is Timing.ON_TIME
    if reported + timedelta(seconds=1) > tw.end:
        assert classify(reported, tw, NATIVE.timestamp_resolution(1.0)) is Timing.TOO_LATE
