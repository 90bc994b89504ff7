"""Templar's per-parameter payload layout, derived from the same chunk plan as ours.

For a parameter `n` Templar's payload holds (docs/templar.md, "Payload format"):
    n + "idxs"          uint8 (n_chunks * k * 3 / 2,)   12-bit indices, two in three bytes
    n + "vals"          uint8 (gx, k) for a vector, (gy, gx, k) for a matrix: value codes
    n + "quant_params"  (shift, scale, offset, lookup, dtype)
The chunking, the per-chunk k and the index order within a chunk are this project's
(`core.compression.chunking`), which follow Templar's; only vectors and matrices have a
Templar layout, and k must be even (two indices per three bytes).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import attrs

from core.compression.base import Shape
from core.compression.chunking import Plan
from core.compression.topk import TopKCompressor, TopKParams

MAX_FOLDER = 128  # characters of the archive's folder name (torch uses the file's stem)


@attrs.frozen
class ParamLayout:
    name: str
    shape: Shape
    vals_shape: Shape
    idx_bytes: int
    entries: int
    chunk_size: int


@attrs.frozen(eq=False)
class Layout:
    plan: Plan
    params: tuple[ParamLayout, ...]
    bins: int

    @property
    def entries(self) -> int:
        return self.plan.total_entries

    def size_limit(self) -> int:
        """Bytes a honest payload for this layout stays under: the tensor bytes plus a
        generous allowance per parameter for the zip entries and the pickle."""
        tensors = sum(p.idx_bytes + p.entries for p in self.params)
        return tensors + sum(self.per_param_overhead(p.name) for p in self.params) + (64 << 10)

    def max_entries(self) -> int:
        return 4 * len(self.params) + 16  # idxs, vals, shift, lookup; plus torch's records

    def max_pickle_bytes(self) -> int:
        return 16384 + sum(1024 + 4 * len(p.name.encode()) for p in self.params)

    @staticmethod
    def per_param_overhead(name: str) -> int:
        # four zip entries (local and central headers with their names under a folder of up
        # to MAX_FOLDER characters, 64-byte alignment padding) and the parameter's pickle
        entry = 30 + 46 + 2 * (MAX_FOLDER + 16) + 64 + 64
        return 4 * entry + 1024 + 4 * len(name.encode())


def layout_for(compressor: TopKCompressor, shapes: Mapping[str, Shape]) -> Layout:
    """Templar's layout for `shapes` under `compressor`'s parameters; ValueError where
    Templar has none (a scalar, more than 2 dimensions, an odd k, no quantisation)."""
    key = tuple(sorted((str(n), tuple(int(d) for d in s)) for n, s in shapes.items()))
    return _layout(compressor.params, key)


@functools.lru_cache(maxsize=8)
def _layout(params: TopKParams, shapes: tuple[tuple[str, Shape], ...]) -> Layout:
    if not params.quantized:
        raise ValueError("Templar's payloads are always quantised (quantization_bins > 0)")
    if params.quantization_bins > 256:
        raise ValueError("Templar stores one value code per byte")
    plan = Plan(shapes, params.target_chunk, params.topk)
    out = []
    for m in plan.params:
        if len(m.shape) not in (1, 2):
            raise ValueError(f"{m.name}: Templar has no layout for shape {m.shape}")
        if m.k % 2:
            raise ValueError(f"{m.name}: k = {m.k} is odd; Templar packs indices in pairs")
        gy, gx = m.grid
        vals = (gx, m.k) if len(m.shape) == 1 else (gy, gx, m.k)
        out.append(ParamLayout(m.name, m.shape, vals, m.n_entries * 3 // 2, m.n_entries,
                               m.chunk_size))  # fmt: skip
    return Layout(plan=plan, params=tuple(out), bins=params.quantization_bins)
