"""The weight rules every chain adapter applies before setting weights."""

from __future__ import annotations

import math
from collections.abc import Sequence


def normalised_weights(uids: Sequence[int], weights: Sequence[float]) -> dict[int, float]:
    """{uid: weight / total} for positive weights; ValueError for what the chain would refuse."""
    if len(uids) != len(weights):
        raise ValueError(f"{len(uids)} uids but {len(weights)} weights")
    if len(set(uids)) != len(uids):
        raise ValueError("uids are not unique")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError("weights must be finite and non-negative")
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError("all weights are zero; nothing to set")
    return {int(u): w / total for u, w in zip(uids, weights, strict=True) if w > 0}
