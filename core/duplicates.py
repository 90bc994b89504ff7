"""Spotting peers that copy each other: similar sets of kept gradient entries.

Honest peers train on different data, so the entries their top-k keeps differ a lot; a peer
that re-uploads someone else's gradient (even with its values perturbed) keeps the same
entries. Each payload is reduced to a bottom-k MinHash sketch of its kept positions (cheap,
fixed size, so memory does not grow with the payload), and pairs whose sketches overlap at
or above a threshold are flagged. `later_copies` turns the flags into verdicts: of two similar
uploads the later one (by the store's Last-Modified) is the copy, since a copier can only
upload what it has already read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

import torch

from core.compression import Compressed, Compressor
from core.compression.topk import POSITION_SHIFT

SKETCH = 256
_MUL = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64: a well-mixing odd constant


def _positions(compressor: Compressor, compressed: Compressed) -> torch.Tensor:
    own = getattr(compressor, "positions", None)
    if own is not None:
        return own(compressed).to("cpu", torch.int64)
    parts = []
    for number, tensor in enumerate(compressor.decode(compressed, device="cpu").values()):
        parts.append(tensor.reshape(-1).nonzero().reshape(-1) + (number << POSITION_SHIFT))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def _mix(x: torch.Tensor) -> torch.Tensor:
    # splitmix-style finaliser; int64 multiplication wraps, which is what a hash wants here.
    x = x * _MUL
    x = x ^ (x >> 31)
    x = x * _MUL
    return x ^ (x >> 29)


def signature(compressor: Compressor, compressed: Compressed, size: int = SKETCH) -> torch.Tensor:
    """The `size` smallest hashes of the payload's kept positions, sorted."""
    hashes = _mix(_positions(compressor, compressed))
    if hashes.numel() > size:
        hashes = torch.topk(hashes, size, largest=False).values
    return torch.sort(hashes).values


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Estimated Jaccard similarity of the two sets behind sketches `a` and `b`."""
    size = min(a.numel(), b.numel())
    if size == 0:
        return 0.0
    union_bottom = torch.unique(torch.cat([a, b]))[:size]
    shared = torch.isin(union_bottom, a) & torch.isin(union_bottom, b)
    return float(shared.sum()) / size


def similar_pairs(
    sketches: Mapping[int, torch.Tensor], threshold: float
) -> tuple[tuple[int, int, float], ...]:
    """(uid_a, uid_b, similarity) for every pair at or above `threshold`, uid_a < uid_b."""
    uids = sorted(sketches)
    found = []
    for i, a in enumerate(uids):
        for b in uids[i + 1 :]:
            score = similarity(sketches[a], sketches[b])
            if score >= threshold:
                found.append((a, b, round(score, 4)))
    return tuple(found)


def later_copies(
    sketches: Mapping[int, torch.Tensor],
    uploaded: Mapping[int, datetime],
    threshold: float,
) -> dict[int, tuple[int, float]]:
    """{copy uid: (uid of the earliest upload it is similar to, similarity)}.

    An upload is a copy when a similar one was uploaded no later than it. Equal times tell
    nothing about who copied whom (S3 keeps whole seconds), and paying both would pay a quick
    copier, so both sides of a tie are copies. A uid without a time counts as the latest.
    """

    def when(uid: int) -> float:
        stamp = uploaded.get(uid)
        return math.inf if stamp is None else stamp.timestamp()

    found: dict[int, tuple[int, float]] = {}
    for a, b, score in similar_pairs(sketches, threshold):
        for copy, original in ((a, b), (b, a)):
            if when(original) > when(copy):
                continue
            known = found.get(copy)
            if known is None or (when(original), original) < (when(known[0]), known[0]):
                found[copy] = (original, score)
    return found
