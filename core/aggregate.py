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
- `KEPT_MEAN`: Templar's rule (its `batch_decompress`): the median clip above (with the
  lower middle of an even count as the median, as `torch.median` gives it), then each
  entry is the mean over the peers that kept it (a `scatter_reduce` mean), not over every
  peer. Holds the compressed payloads like `MEDIAN_CLIP`, and at `result` counts every
  entry's keepers from the payloads' kept positions. Top-k payloads without DCT only.

The result is otherwise the mean over peers (sum of weighted gradients / number of peers).
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Mapping

import attrs
import torch

from core.compression import (
    Checked,
    Compressed,
    Compressor,
    Prepared,
    Shape,
    TopKCompressor,
    make_sum,
)
from core.compression.topk import POSITION_SHIFT

_TINY = 1e-12
_OFFSET_MASK = (1 << POSITION_SHIFT) - 1


class Normalisation(enum.Enum):
    NONE = "none"
    UNIT = "unit"
    MEDIAN_CLIP = "median_clip"
    KEPT_MEAN = "kept_mean"


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
    """Accumulates peers' checked gradients into one dense mean per parameter.

    Every caller uses it the same way: `prepare` each peer (in parallel threads if wanted),
    `await add` them one at a time on the event loop, then take the `result` once.
    """

    def __init__(
        self,
        compressor: Compressor,
        shapes: Mapping[str, Shape],
        *,
        device: torch.device | str = "cpu",
        normalisation: Normalisation = Normalisation.UNIT,
        peers: int | None = None,
        background: bool = False,
    ) -> None:
        """`peers`: how many peers are expected, when known (lets the sum plan its work);
        `background`: the sum may work on threads of its own (see `make_sum`)."""
        self._mode = normalisation
        self._holds = normalisation in (Normalisation.MEDIAN_CLIP, Normalisation.KEPT_MEAN)
        # Under KEPT_MEAN, the compressor whose kept positions count each entry's keepers.
        self._topk: TopKCompressor | None = None
        if normalisation is Normalisation.KEPT_MEAN:
            if not isinstance(compressor, TopKCompressor) or compressor.params.use_dct:
                raise ValueError("kept_mean needs a top-k compressor without DCT")
            self._topk = compressor
        self._sum = make_sum(compressor, shapes, device, peers=peers, background=background)
        self._held: list[tuple[Compressed, dict[str, float]]] = []
        self.count = 0

    def prepare(self, checked: Checked, *, on_loop: bool = False) -> Peer:
        """The part of `add` that may run in parallel threads (`on_loop`: this is the event
        loop's thread). The wire tensors are kept only where a second pass needs them."""
        keep = checked.compressed if self._holds else None
        return Peer(self._sum.prepare(checked, on_loop=on_loop), keep)

    async def add(self, peer: Peer) -> dict[str, float]:
        """Fold one prepared peer in; returns its norms."""
        if self._holds:
            assert peer.compressed is not None
            norms = peer.prepared.norms
            if norms is None:  # weight 0 adds nothing: the sum just measures the norms
                norms = await self._sum.add(peer.prepared, _zeros)
            self._held.append((peer.compressed, norms))
        else:
            weigh = _unit if self._mode is Normalisation.UNIT else _ones
            norms = await self._sum.add(peer.prepared, weigh)
        self.count += 1
        return norms

    def result(self) -> dict[str, torch.Tensor] | None:
        """The mean of the normalised gradients, or None when nothing was added."""
        if self.count == 0:
            return None
        keepers = None
        if self._held:
            names = self._held[0][1]
            # Templar's rule takes torch.median: the lower middle of an even count.
            middle = (
                statistics.median_low
                if self._mode is Normalisation.KEPT_MEAN
                else statistics.median
            )
            median = {name: middle(n[name] for _, n in self._held) for name in names}

            def clip(norms: dict[str, float]) -> dict[str, float]:
                return {name: _clip(median[name], n) for name, n in norms.items()}

            if self._topk is not None:
                keepers = self._keepers(self._topk)
            for compressed, _ in self._held:
                self._sum.fold(compressed, clip)
            self._held.clear()
        if keepers is None:
            return self._sum.result(1.0 / self.count)
        total = self._sum.result(1.0)
        return {
            name: t / keepers[name].reshape(t.shape).clamp(min=1).to(t.dtype)
            for name, t in total.items()
        }

    def _keepers(self, topk: TopKCompressor) -> dict[str, torch.Tensor]:
        """How many held peers kept each entry, per parameter (flat)."""
        shapes = self._held[0][0].shapes
        counts = {name: torch.zeros(math.prod(shape), dtype=torch.int64) for name, shape in shapes}
        names = [name for name, _ in shapes]
        for compressed, _ in self._held:
            positions = topk.positions(compressed)
            numbers, offsets = positions >> POSITION_SHIFT, positions & _OFFSET_MASK
            for number, name in enumerate(names):
                mine = offsets[numbers == number]
                counts[name] += torch.bincount(mine, minlength=counts[name].numel())
        return counts


@attrs.frozen(eq=False)
class Peer:
    """A peer prepared for `Aggregator.add` (its wire tensors only when a second pass needs
    them)."""

    prepared: Prepared
    compressed: Compressed | None = attrs.field(default=None, repr=False)
