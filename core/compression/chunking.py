"""How a parameter is cut into chunks, and the index plan shared by encode, decode and checks.

Every parameter is viewed as a matrix (rows, cols): a 2-D weight as itself, a 1-D vector or a
scalar as one row, a tensor of more dimensions as (shape[0], product of the rest). Templar
only handles 1-D and 2-D; a vector is exactly its (1, L) matrix here, so both agree there.

Chunk side along a dimension of size d is the largest divisor of d that is <= target_chunk
(Templar's `_get_smaller_split`), so chunks tile the matrix exactly. Within a chunk of h x w
the position (i, j) has the index i * w + j; chunks are numbered row-major over the grid.
The per-chunk k is Templar's: min(topk, h*w), at least 2, rounded down to even, and never
more than h*w.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import attrs
import torch

from core.compression.base import Shape, Shapes

# Bits of one index within its chunk on the wire: chunks are at most 64 x 64 = 4096 entries.
INDEX_BITS = 12
INDEX_MASK = (1 << INDEX_BITS) - 1


def largest_divisor_at_most(n: int, limit: int) -> int:
    """Largest divisor of n that is <= limit (n >= 1, limit >= 1)."""
    best = 1
    root = math.isqrt(n)
    for d in range(1, root + 1):
        if n % d == 0:
            if d <= limit:
                best = max(best, d)
            if n // d <= limit:
                best = max(best, n // d)
    return best


def chunk_k(topk: int, chunk_size: int) -> int:
    k = max(min(topk, chunk_size), 2)
    k -= k % 2
    return min(k, chunk_size)


def as_matrix(shape: Shape) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


@attrs.frozen
class ParamPlan:
    name: str
    shape: Shape
    rows: int
    cols: int
    h: int
    w: int
    k: int
    offset: int  # first entry of this parameter in the k-entry stream

    @property
    def grid(self) -> tuple[int, int]:
        return self.rows // self.h, self.cols // self.w

    @property
    def n_chunks(self) -> int:
        return (self.rows // self.h) * (self.cols // self.w)

    @property
    def chunk_size(self) -> int:
        return self.h * self.w

    @property
    def n_entries(self) -> int:
        return self.n_chunks * self.k

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def chunked_view(self, flat: torch.Tensor) -> torch.Tensor:
        """(grid_y, grid_x, h, w) strided view of a row-major buffer of this parameter."""
        gy, gx = self.grid
        return flat.view(gy, self.h, gx, self.w).permute(0, 2, 1, 3)


class Plan:
    """Everything derived from (parameter shapes, target_chunk, topk), cached per device.

    Parameters are in name order; the k-entry stream holds each parameter's chunks in
    row-major grid order, k entries per chunk.
    """

    def __init__(self, shapes: Sequence[tuple[str, Shape]], target_chunk: int, topk: int):
        params = []
        offset = 0
        for name, shape in sorted(shapes):
            rows, cols = as_matrix(shape)
            if rows * cols == 0:
                raise ValueError(f"parameter {name!r} has no elements")
            h = largest_divisor_at_most(rows, target_chunk)
            w = largest_divisor_at_most(cols, target_chunk)
            k = chunk_k(topk, h * w)
            params.append(ParamPlan(name, tuple(shape), rows, cols, h, w, k, offset))
            offset += params[-1].n_entries
        self.params: tuple[ParamPlan, ...] = tuple(params)
        self.total_entries = offset
        groups: dict[tuple[int, int], list[ParamPlan]] = {}
        for p in self.params:
            groups.setdefault((p.h, p.w), []).append(p)
        self.groups: dict[tuple[int, int], tuple[ParamPlan, ...]] = {
            key: tuple(members) for key, members in groups.items()
        }
        # consecutive parameters with equal k form one (rows, k) block of the stream
        runs: list[list[int]] = []
        for p in self.params:
            if runs and runs[-1][2] == p.k:
                runs[-1][1] += p.n_chunks
            else:
                runs.append([p.offset, p.n_chunks, p.k])
        self.runs: tuple[tuple[int, int, int], ...] = tuple(tuple(r) for r in runs)
        self._device_cache: dict[torch.device, dict[str, object]] = {}
        self._lock = threading.Lock()

    def param_ids(self, device: torch.device) -> torch.Tensor:
        """For every stream entry, the position of its parameter (int64)."""
        return self._cached(device, "param_ids", self._make_param_ids)

    def chunk_sizes(self, device: torch.device) -> torch.Tensor:
        """For every stream entry, the size of its chunk (int64): indices must be below it."""
        return self._cached(device, "chunk_sizes", self._make_chunk_sizes)

    def flat_index(self, p: ParamPlan, local: torch.Tensor) -> torch.Tensor:
        """Row-major offsets into parameter `p` of within-chunk indices `local` (n_chunks, k)."""
        device = local.device
        base = self._cached(device, f"base/{p.name}", lambda d: _chunk_bases(p, d))
        loc = self._cached(device, f"loc/{p.name}", lambda d: _local_offsets(p, d))
        return base.unsqueeze(1) + loc[local]

    def _make_param_ids(self, device: torch.device) -> torch.Tensor:
        counts = torch.tensor([p.n_entries for p in self.params], dtype=torch.int64)
        ids = torch.repeat_interleave(torch.arange(len(self.params)), counts)
        return ids.to(device)

    def _make_chunk_sizes(self, device: torch.device) -> torch.Tensor:
        counts = torch.tensor([p.n_entries for p in self.params], dtype=torch.int64)
        sizes = torch.tensor([p.chunk_size for p in self.params], dtype=torch.int64)
        return torch.repeat_interleave(sizes, counts).to(device)

    def _cached(self, device: torch.device, key: str, make):
        device = torch.device(device)
        with self._lock:
            per_device = self._device_cache.setdefault(device, {})
            value = per_device.get(key)
            if value is None:
                value = per_device[key] = make(device)
            return value


def _chunk_bases(p: ParamPlan, device: torch.device) -> torch.Tensor:
    gy, gx = p.grid
    ys = torch.arange(gy, dtype=torch.int64) * (p.h * p.cols)
    xs = torch.arange(gx, dtype=torch.int64) * p.w
    return (ys.unsqueeze(1) + xs.unsqueeze(0)).reshape(-1).to(device)


def _local_offsets(p: ParamPlan, device: torch.device) -> torch.Tensor:
    i = torch.arange(p.h, dtype=torch.int64).unsqueeze(1) * p.cols
    j = torch.arange(p.w, dtype=torch.int64).unsqueeze(0)
    return (i + j).reshape(-1).to(device)


class PlanCache:
    """A few plans keyed by shapes; bounded so odd inputs cannot grow memory."""

    def __init__(self, target_chunk: int, topk: int, size: int = 8):
        self._target_chunk = target_chunk
        self._topk = topk
        self._size = size
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self._lock = threading.Lock()
        self._last: tuple[Shapes, Plan] | None = None

    def get(self, shapes: Sequence[tuple[str, Shape]]) -> Plan:
        last = self._last
        if last is not None and last[0] is shapes:  # a receiver's every peer: same object
            return last[1]
        plan = self._get(shapes)
        if isinstance(shapes, Shapes):  # immutable, so safe to recognise by identity
            self._last = (shapes, plan)
        return plan

    def _get(self, shapes: Sequence[tuple[str, Shape]]) -> Plan:
        key = tuple(sorted((name, tuple(shape)) for name, shape in shapes))
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = Plan(key, self._target_chunk, self._topk)
        with self._lock:
            self._plans[key] = plan
            while len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return plan
