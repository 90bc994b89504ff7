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


def peak(t: torch.Tensor) -> float:
    """The largest magnitude in `t`; NaN when `t` holds a NaN, 0.0 when it is empty."""
    if t.numel() == 0:
        return 0.0
    if t.device.type == "cpu":  # numpy: a few microseconds for small tables, no temporary
        a = t.numpy()
        return float(max(np.max(a), -np.min(a)))
    return float(t.abs().max())


def check_values(name: str, t: torch.Tensor) -> None:
    """`InvalidPayload` unless every value of `t` is finite and within `MAX_ABS_VALUE`."""
    top = peak(t)
    if not math.isfinite(top):
        raise InvalidPayload("non_finite", f"{name} holds NaN or inf")
    if top > MAX_ABS_VALUE:
        raise InvalidPayload("value_out_of_range", f"{name} holds |{top:.3g}| > {MAX_ABS_VALUE:g}")
