"""Running sums of many peers' gradients, for gather: one interface, three implementations.

Every sum is used the same way (`RunningSum`): `prepare` a checked payload (the part that
may run in parallel threads), `await add` it with per-parameter weights (the serial part;
it waits for the sum's own back-pressure on the event loop), then take the `result` once.
`core.compression.sums.make_sum` picks the implementation, once, from the compressor, the
device and the format:

- `DenseSum` works for any compressor: decode each peer to dense tensors and add them.
- `ChunkSum` (here) is the top-k compressor's torch path: a peer is one scatter-add of its
  kept entries, never a dense decode, kept in the chunk domain (each parameter as rows of
  chunks, under DCT as coefficients) and turned into the parameter layout once, at the end.
- `CompiledSum` (core.compression.compiled_sum) is the top-k compressor's CPU path on the
  compiled kernels, in batches. It gives the very same bits as `ChunkSum`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import attrs
import numpy as np
import torch

from core.compression import dct, packing
from core.compression.base import Checked, Compressed, Compressor, Shape

Weigh = Callable[[dict[str, float]], Mapping[str, float]]


class RunningSum(Protocol):
    def prepare(self, checked: Checked, *, on_loop: bool = False) -> Prepared:
        """Everything of a peer's add that does not touch the sum (safe in parallel threads;
        `on_loop`: this is an event loop's thread)."""
        ...

    async def add(self, prepared: Prepared, weigh: Weigh) -> dict[str, float]:
        """Add a prepared peer with weights `weigh(norms)`; returns its norms. Call on the
        event loop, one add at a time; it waits there (never blocking the loop) while the
        sum is busy."""
        ...

    def fold(self, compressed: Compressed, weigh: Weigh) -> dict[str, float]:
        """`prepare` and add in one synchronous call (a second pass over held payloads)."""
        ...

    def result(self, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """The sum times `scale`, per parameter; once."""
        ...


@attrs.frozen(eq=False)
class Prepared:
    """A peer ready to be added: its norms (None when only adding measures them) and what
    its sum adds (`work`, in the form that sum takes)."""

    norms: dict[str, float] | None
    work: object = attrs.field(repr=False)


class _Serial:
    """Runs the adds of a sum one at a time: on a thread of its own when `background` (the
    add is a pass over the sum that would hold the loop), else right away on the caller's
    thread (a fake clock must see every step)."""

    def __init__(self, background: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sum-add") if background else None

    async def run(self, fn, *args):
        if self._pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # every add was awaited: nothing is left


class DenseSum:
    def __init__(
        self,
        compressor: Compressor,
        shapes: Mapping[str, Shape],
        device: torch.device | str,
        *,
        background: bool = False,
    ) -> None:
        self._compressor = compressor
        self._device = torch.device(device)
        self._sum = {n: torch.zeros(tuple(s), device=self._device) for n, s in shapes.items()}
        self._serial = _Serial(background)

    def prepare(self, checked: Checked, *, on_loop: bool = False) -> Prepared:
        # Decoding here would hold a dense model per waiting peer: keep the compressed form.
        return Prepared(None, checked.compressed)

    async def add(self, prepared: Prepared, weigh: Weigh) -> dict[str, float]:
        return await self._serial.run(self.fold, prepared.work, weigh)

    @torch.no_grad()
    def fold(self, compressed: Compressed, weigh: Weigh) -> dict[str, float]:
        dense = self._compressor.decode(compressed, device=self._device)
        norms = {name: float(t.double().norm()) for name, t in dense.items()}
        weights = weigh(norms)
        for name, t in dense.items():
            self._sum[name].add_(t.to(torch.float32), alpha=float(weights[name]))
        return norms

    def result(self, scale: float = 1.0) -> dict[str, torch.Tensor]:
        self._serial.close()
        for t in self._sum.values():
            t.mul_(scale)
        return self._sum


class ChunkDomain:
    """What both top-k sums share: the plan, where each parameter starts in the flat sum,
    norms from sums of squares, and turning chunk rows into parameters at the end."""

    def __init__(self, compressor, plan) -> None:
        self._compressor = compressor
        self._plan = plan
        self._starts: dict[str, int] = {}
        start = 0
        for m in plan.params:
            self._starts[m.name] = start
            start += m.numel
        self._numel = start

    def _norms(self, squares: np.ndarray | torch.Tensor) -> dict[str, float]:
        """Each parameter's norm from its sum of squares (float64, numpy or torch).

        Python's (correctly rounded) square root on both paths, so that they agree to the
        bit: torch's vectorised one misses the last bit for some float64 inputs
        (docs/gather.md), and a torch call here would let the GIL go on the compiled path,
        which runs on the event loop.
        The DCT is orthonormal, so chunk-domain norms are the parameters' norms."""
        roots = map(math.sqrt, squares.tolist())
        return dict(zip((m.name for m in self._plan.params), roots, strict=True))

    def _views(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters of a sum already in their own (row-major) layout."""
        out = {}
        for m in self._plan.params:
            start = self._starts[m.name]
            out[m.name] = buf[start : start + m.numel].view(m.shape)
        return out

    def _from_chunks(self, buf: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        """Each parameter turned from chunk rows into its own layout (times `scale`) in
        place, through a copy of that one parameter, so the peak is the sum plus the
        largest parameter, not two models."""
        use_dct = self._compressor.params.use_dct
        out: dict[str, torch.Tensor] = {}
        for m in self._plan.params:
            region = buf[self._starts[m.name] : self._starts[m.name] + m.numel]
            chunks = region.view(*m.grid, m.h, m.w)
            if use_dct:
                chunks = dct.inverse(chunks)
                m.chunked_view(region).copy_(chunks.mul_(scale) if scale != 1.0 else chunks)
            elif m.grid[1] == 1 or m.h == 1:
                # Chunks of whole rows (or of single rows) are already in row-major order.
                if scale != 1.0:
                    region.mul_(scale)
            else:
                m.chunked_view(region).copy_(chunks * scale)  # the product is the copy
            out[m.name] = region.view(m.shape)
        return out


@attrs.frozen(eq=False)
class _Entries:
    """A peer for the torch sum: chunk-domain positions and values (or codes and the
    per-parameter value table when quantised)."""

    index: torch.Tensor
    values: torch.Tensor
    table: torch.Tensor | None


class ChunkSum(ChunkDomain):
    """The sum of top-k payloads of one model in torch, one peer at a time (any device).

    Each position receives the same float32 additions in the same peer order as in
    `CompiledSum`, so the two agree to the bit.
    """

    def __init__(self, compressor, plan, device: torch.device | str, *, background=False):
        super().__init__(compressor, plan)
        self._device = torch.device(device)
        if self._device.type == "cpu":
            # numpy's zeros is calloc: the pages are zeroed as the adds first touch them,
            # instead of by a memset of the whole model up front and then again on touch.
            self._buf = torch.from_numpy(np.zeros(self._numel, np.float32))
        else:
            self._buf = torch.zeros(self._numel, device=self._device)
        self._rows = plan._cached(self._device, "chunk_rows", self._make_rows)
        self._serial = _Serial(background)

    def _make_rows(self, device: torch.device) -> torch.Tensor:
        parts = []
        for m in self._plan.params:
            chunk = torch.arange(m.n_chunks, dtype=torch.int64).repeat_interleave(m.k)
            parts.append(self._starts[m.name] + chunk * m.chunk_size)
        return torch.cat(parts).to(device)

    @torch.no_grad()
    def prepare(self, checked: Checked, *, on_loop: bool = False) -> Prepared:
        compressed = checked.compressed
        plan, t, dev = self._plan, compressed.tensors, self._device
        p = self._compressor.params
        entries = plan.total_entries
        local = self._compressor.local_indices(compressed, dev, on_loop=on_loop)
        # int32 positions: the whole model is < 2**31 entries, and half the memory while a
        # prepared peer waits for its turn to be added.
        index = (self._rows + local).to(torch.int32)
        ids = plan.param_ids(dev)
        if p.quantized:
            # A quantised value is table[param, code]: its norms follow from how often each
            # code occurs in each parameter, with no per-entry float work.
            bins = p.quantization_bins
            codes = packing.unpack(t["val"].to(dev), entries, p.value_bits)
            table = t["lookup"].to(dev, torch.float64) + t["shift"].to(dev, torch.float64)[:, None]
            counts = torch.bincount(ids * bins + codes, minlength=table.numel()).view_as(table)
            squares = squares_of(counts, table)
            return Prepared(self._norms(squares), _Entries(index, codes.to(torch.uint8), table))
        vals = t["val"].to(dev, torch.float32)
        # As the compiled scan squares: in float32 (sums exact in any order), in float64 where
        # the float32 square overflows (past 1.8e19).
        square = vals.square()
        square = torch.where(torch.isinf(square), vals.double().square(), square.double())
        squares = torch.bincount(ids, weights=square, minlength=len(plan.params))
        return Prepared(self._norms(squares), _Entries(index, vals, None))

    async def add(self, prepared: Prepared, weigh: Weigh) -> dict[str, float]:
        return await self._serial.run(self._commit, prepared, weigh)

    @torch.no_grad()
    def _commit(self, prepared: Prepared, weigh: Weigh) -> dict[str, float]:
        plan, dev, peer = self._plan, self._device, prepared.work
        assert isinstance(peer, _Entries) and prepared.norms is not None
        weights = weigh(prepared.norms)
        per_param = torch.tensor([float(weights[m.name]) for m in plan.params], device=dev)
        ids = plan.param_ids(dev)
        if peer.table is not None:
            bins = peer.table.shape[1]
            weighted = (peer.table * per_param.to(torch.float64)[:, None]).to(torch.float32)
            values = weighted.reshape(-1)[ids * bins + peer.values]
        else:
            values = peer.values * per_param[ids]
        # scatter_add_ beats index_add_ here (docs/gather.md)
        self._buf.scatter_add_(0, peer.index.to(torch.int64), values)
        return prepared.norms

    def fold(self, compressed: Compressed, weigh: Weigh) -> dict[str, float]:
        return self._commit(self.prepare(Checked(compressed)), weigh)

    @torch.no_grad()
    def result(self, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """The sum (times `scale`) per parameter, as views into the sum's own buffer."""
        self._serial.close()
        out = self._from_chunks(self._buf, scale)
        self._buf = torch.zeros(0, device=self._device)  # the sum is handed over, once
        return out


def squares_of(counts, table):
    """Each parameter's sum of squared values from its code counts, bin by bin in order: the
    same additions in the same order on the torch and the numpy side (bit-identical norms)."""
    squares = counts[:, 0] * table[:, 0] ** 2
    for j in range(1, table.shape[1]):
        squares = squares + counts[:, j] * table[:, j] ** 2
    return squares
