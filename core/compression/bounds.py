"""The largest decoded value a receiver accepts, so that every sum stays finite.

A gradient value is a float32, which reaches 3.4e38: two of them added, or one squared in
float32, are infinite. Every aggregate is a weighted sum of at most a few thousand peers'
values, with weights of at most 1 (UNIT, MEDIAN_CLIP, NONE), folded in float32, and the
inverse DCT grows an element by at most sqrt(chunk) (64). Bounding each decoded value by
1e10 keeps that under 1e10 x 1e4 peers x 64 = 6.4e15, far from float32's limit, whatever the
peers send; a real gradient entry is many orders of magnitude smaller, even one that
error feedback has accumulated for long. The bound is checked on the value as it is used:
for a quantised payload on `shift + lookup[code]`, not on each part.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from core.invalid import InvalidPayload

MAX_ABS_VALUE = 1e10


def _array_peak(a: np.ndarray) -> float:
    """`peak` of a non-empty numpy array: a few microseconds for small tables, no temporary."""
    return float(max(np.max(a), -np.min(a)))


def peak(t: torch.Tensor) -> float:
    """The largest magnitude in `t`; NaN when `t` holds a NaN, 0.0 when it is empty."""
    if t.numel() == 0:
        return 0.0
    if t.device.type == "cpu":
        return _array_peak(t.numpy())
    return float(t.abs().max())


def table_sums_fine(shift: torch.Tensor, lookup: torch.Tensor) -> bool:
    """Whether every `shift[p] + lookup[p, b]` is finite and within the bound, in numpy (a
    peer's tables are a few hundred numbers, where each torch call costs more than the work).
    True means the full checks (each table finite, then `check_values` on the sums) pass:
    each number of both tables is in some sum. False leaves those checks to say what is
    wrong."""
    try:  # a table numpy cannot view (another device, dtype or autograd) takes torch's path
        s, lut = shift.numpy(), lookup.numpy()
    except (TypeError, RuntimeError):
        return False
    if s.ndim != 1 or lut.ndim != 2 or lut.shape[0] != s.shape[0] or lut.size == 0:
        return False
    with np.errstate(invalid="ignore"):  # inf + -inf: a NaN the check refuses, no warning
        sums = lut.astype(np.float64) + s.astype(np.float64)[:, None]
    top = _array_peak(sums)
    return math.isfinite(top) and top <= MAX_ABS_VALUE


def check_values(name: str, t: torch.Tensor) -> None:
    """`InvalidPayload` unless every value of `t` is finite and within `MAX_ABS_VALUE`."""
    top = peak(t)
    if not math.isfinite(top):
        raise InvalidPayload("non_finite", f"{name} holds NaN or inf")
    if top > MAX_ABS_VALUE:
        raise InvalidPayload("value_out_of_range", f"{name} holds |{top:.3g}| > {MAX_ABS_VALUE:g}")
