"""Normalising and averaging peers' gradients, one peer at a time.

Each peer's gradient is weighted per parameter before it is added, so one peer with a huge
gradient cannot dominate the mean:

- `UNIT`: every parameter of every peer is scaled to unit L2 norm (Templar's original rule).
  Folds each peer as it arrives: memory is the dense accumulator, whatever the peer count.
- `MEDIAN_CLIP`: a parameter is scaled down to the median norm of that parameter across the
  gathered peers when larger, and left alone when smaller. The median needs every peer's
  norm first, so the compressed payloads (not dense tensors) are held until `finish`:
  memory grows by one compressed payload per peer.
- `NONE`: plain sum.

The result is the mean over peers (sum of weighted gradients / number of peers).
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Mapping

import torch

from core.compression import Compressed, Compressor, Shape, fold

_TINY = 1e-12


class Normalisation(enum.Enum):
    NONE = "none"
    UNIT = "unit"
    MEDIAN_CLIP = "median_clip"


def _unit(norms: dict[str, float]) -> dict[str, float]:
    return {name: (1.0 / n if n > _TINY else 0.0) for name, n in norms.items()}


def _ones(norms: dict[str, float]) -> dict[str, float]:
    return dict.fromkeys(norms, 1.0)


class Aggregator:
    """Accumulates peers' compressed gradients into one dense mean per parameter."""

    def __init__(
        self,
        compressor: Compressor,
        shapes: Mapping[str, Shape],
        *,
        device: torch.device | str = "cpu",
        normalisation: Normalisation = Normalisation.UNIT,
    ) -> None:
        self._compressor = compressor
        self._mode = normalisation
        self._sum = {
            name: torch.zeros(tuple(shape), dtype=torch.float32, device=device)
            for name, shape in shapes.items()
        }
        self._held: list[tuple[Compressed, dict[str, float]]] = []
        self.count = 0
        self.norms: list[dict[str, float]] = []

    def add(self, compressed: Compressed) -> dict[str, float]:
        """Fold one peer in; returns its per-parameter norms (before normalisation)."""
        if self._mode is Normalisation.MEDIAN_CLIP:
            norms = self._measure(compressed)
            self._held.append((compressed, norms))
        else:
            weigh = _unit if self._mode is Normalisation.UNIT else _ones
            norms = fold(self._compressor, compressed, self._sum, weigh)
        self.count += 1
        self.norms.append(norms)
        return norms

    def _measure(self, compressed: Compressed) -> dict[str, float]:
        # Weight 0 adds nothing: this is the cheap way to get the compressor's norms.
        return fold(self._compressor, compressed, self._sum, lambda n: dict.fromkeys(n, 0.0))

    def finish(self) -> dict[str, torch.Tensor] | None:
        """The mean of the normalised gradients, or None when nothing was added."""
        if self.count == 0:
            return None
        if self._mode is Normalisation.MEDIAN_CLIP:
            median = {name: statistics.median(n[name] for _, n in self._held) for name in self._sum}

            def clip(norms: dict[str, float]) -> dict[str, float]:
                return {
                    name: (min(1.0, median[name] / n) if n > _TINY else 0.0)
                    for name, n in norms.items()
                }

            for compressed, _ in self._held:
                fold(self._compressor, compressed, self._sum, clip)
            self._held.clear()
        scale = 1.0 / self.count
        for tensor in self._sum.values():
            tensor.mul_(scale)
        return self._sum
