"""A quantised payload's value tables (shift, lookup): the numpy fast check accepts exactly
the tables the torch checks accept."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from core.compression.bounds import MAX_ABS_VALUE, check_values, peak, table_sums_fine
from core.invalid import InvalidPayload

special = st.sampled_from([math.nan, math.inf, -math.inf, 3.0e38, -3.0e38, MAX_ABS_VALUE])
numbers = st.one_of(st.floats(-1e3, 1e3, width=32), special, st.floats(width=32))


def _torch_accepts(shift: torch.Tensor, lookup: torch.Tensor) -> bool:
    if not (math.isfinite(peak(shift)) and math.isfinite(peak(lookup))):
        return False
    try:
        check_values("shift + lookup", lookup.double() + shift.double()[:, None])
    except InvalidPayload:
        return False
    return True


@pytest.mark.filterwarnings("error")  # a hostile table must not spill numpy warnings
@given(st.integers(1, 6), st.integers(1, 5), st.data())
def test_fast_check_agrees_with_the_torch_checks(rows: int, bins: int, data) -> None:
    shift = torch.tensor(data.draw(st.lists(numbers, min_size=rows, max_size=rows)))
    flat = data.draw(st.lists(numbers, min_size=rows * bins, max_size=rows * bins))
    lookup = torch.tensor(flat, dtype=torch.float32).view(rows, bins)
    shift = shift.to(torch.float32)
    fine = table_sums_fine(shift, lookup)
    # True only when the torch checks pass; the decoder runs those whenever it is False.
    assert fine == _torch_accepts(shift, lookup)


def test_tables_numpy_cannot_view_take_the_torch_path() -> None:
    assert not table_sums_fine(torch.zeros(2, requires_grad=True), torch.zeros(2, 3))
    assert not table_sums_fine(torch.zeros(2), torch.zeros(3, 3))  # rows do not match
    assert not table_sums_fine(torch.zeros(2), torch.zeros(2, 0))  # no sums to check
