"""Normalising and averaging peers' gradients, one peer at a time.

Each peer's gradient is weighted per parameter before it is added, so one peer with a huge
gradient cannot dominate the mean:

- `UNIT`: every parameter of every peer is scaled to unit L2 norm (Templar's original rule).
  Folds each peer as it arrives: memory is one model-sized sum, whatever the peer count.
- `MEDIAN_CLIP`: a parameter is scaled down to the median norm of that parameter across the
  gathered peers when larger, and left alone when smaller. The median needs every peer's
  norm first, so the compressed payloads (not dense tensors) are held until `finish`:
  memory grows by one compressed payload per peer.
- `NONE`: plain sum.

The result is the mean over peers (sum of weighted gradients / number of peers).
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Mapping

import torch

from core.compression import Compressed, Compressor, Shape, make_sum

_TINY = 1e-12


class Normalisation(enum.Enum):
    NONE = "none"
    UNIT = "unit"
    MEDIAN_CLIP = "median_clip"


def _usable(n: float) -> bool:
    # `inf > _TINY` holds and `nan > _TINY` does not: both must give weight 0, never 1 or NaN.
    return n > _TINY and math.isfinite(n)


def _unit(norms: dict[str, float]) -> dict[str, float]:
    return {name: (1.0 / n if _usable(n) else 0.0) for name, n in norms.items()}


def _clip(median: float, n: float) -> float:
    """The weight that scales a norm `n` down to `median`, never up; 0 for an unusable one
    (`min(1.0, nan)` is 1.0 in Python, which would give an attacker full weight)."""
    if not (_usable(n) and math.isfinite(median)):
        return 0.0
    return min(1.0, median / n)


def _ones(norms: dict[str, float]) -> dict[str, float]:
    return dict.fromkeys(norms, 1.0)


def _zeros(norms: dict[str, float]) -> dict[str, float]:
    return dict.fromkeys(norms, 0.0)


class Aggregator:
    """Accumulates peers' compressed gradients into one dense mean per parameter."""

    def __init__(
        self,
        compressor: Compressor,
        shapes: Mapping[str, Shape],
        *,
        device: torch.device | str = "cpu",
        normalisation: Normalisation = Normalisation.UNIT,
        peers: int | None = None,
    ) -> None:
        """`peers`: how many peers are expected, when known (lets the sum plan its work)."""
        self._mode = normalisation
        self._sum = make_sum(compressor, shapes, device, peers=peers)
        self._held: list[tuple[Compressed, dict[str, float]]] = []
        self.count = 0

    @property
    def queues(self) -> bool:
        """Whether `add` only queues the peer (a copy, well under a millisecond), the pass
        over the sum running on a thread of its own: the compiled CPU sum."""
        return bool(getattr(self._sum, "queues", False))

    def busy(self):
        """A `concurrent.futures.Future` to await before the next `add` when that add
        would wait for the sum's background work; None when it would not."""
        busy = getattr(self._sum, "busy", None)
        return None if busy is None else busy()

    def prepare(self, compressed: Compressed) -> object:
        """The part of `add` that may run in parallel threads, ahead of the serial part."""
        return self._sum.prepare(compressed)

    def add(
        self, compressed: Compressed | None, prepared: object | None = None
    ) -> dict[str, float]:
        """Fold one peer in (from `prepare`'s result when given); returns its norms.

        `compressed` may be None when `prepared` is given, except with MEDIAN_CLIP, which
        keeps it for the second pass.
        """
        if prepared is None:
            prepared = self._sum.prepare(compressed)
        if self._mode is Normalisation.MEDIAN_CLIP:
            norms = getattr(prepared, "norms", None)
            if norms is None:  # weight 0 adds nothing: the sum just measures the norms
                norms = self._sum.commit(prepared, _zeros)
            self._held.append((compressed, norms))
        else:
            weigh = _unit if self._mode is Normalisation.UNIT else _ones
            norms = self._sum.commit(prepared, weigh)
        self.count += 1
        return norms

    def finish(self) -> dict[str, torch.Tensor] | None:
        """The mean of the normalised gradients, or None when nothing was added."""
        if self.count == 0:
            return None
        if self._held:
            names = self._held[0][1]
            median = {name: statistics.median(n[name] for _, n in self._held) for name in names}

            def clip(norms: dict[str, float]) -> dict[str, float]:
                return {name: _clip(median[name], n) for name, n in norms.items()}

            for compressed, _ in self._held:
                self._sum.fold(compressed, clip)
            self._held.clear()
        return self._sum.result(1.0 / self.count)
