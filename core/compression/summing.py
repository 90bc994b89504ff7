"""Running sums of many peers' gradients, for gather.

`DenseSum` works for any compressor: decode each peer to dense tensors and add them.
`ChunkSum` is the top-k compressor's fast path: a peer is one scatter-add of its kept
entries (on the CPU, compiled and batched: `cpu_fold`), never a dense decode. The torch path
and the DCT keep the sum in the chunk domain (each parameter as rows of chunks, under DCT as
coefficients) and turn it into the parameter layout (and invert the DCT) once, at the end;
the compiled path without the DCT adds straight into the parameters' layout. On the CPU the
compiled sum reuses a buffer kept from the last gather (`buffers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import attrs
import numpy as np
import torch

from core.compression import cpu_fold, dct, packing
from core.compression.base import Compressed, Compressor, Shape
from core.compression.buffers import BUFFERS

Weigh = Callable[[dict[str, float]], Mapping[str, float]]


class DenseSum:
    def __init__(
        self, compressor: Compressor, shapes: Mapping[str, Shape], device: torch.device | str
    ) -> None:
        self._compressor = compressor
        self._device = torch.device(device)
        self._sum = {n: torch.zeros(tuple(s), device=self._device) for n, s in shapes.items()}

    def prepare(self, compressed: Compressed) -> Compressed:
        # Decoding here would hold a dense model per waiting peer: keep the compressed form.
        return compressed

    def commit(self, prepared: Compressed, weigh: Weigh) -> dict[str, float]:
        return self.fold(prepared, weigh)

    @torch.no_grad()
    def fold(self, compressed: Compressed, weigh: Weigh) -> dict[str, float]:
        dense = self._compressor.decode(compressed, device=self._device)
        norms = {name: float(t.double().norm()) for name, t in dense.items()}
        weights = weigh(norms)
        for name, t in dense.items():
            self._sum[name].add_(t.to(torch.float32), alpha=float(weights[name]))
        return norms

    def result(self, scale: float = 1.0) -> dict[str, torch.Tensor]:
        for t in self._sum.values():
            t.mul_(scale)
        return self._sum


@attrs.frozen(eq=False)
class Prepared:
    """A peer ready to be added: its norms, chunk-domain positions and values (or codes and
    the per-parameter value table when quantised)."""

    norms: dict[str, float]
    index: torch.Tensor
    values: torch.Tensor
    table: torch.Tensor | None


@attrs.frozen(eq=False)
class Scanned:
    """A validated peer for the CPU batched fold: its norms, what `cpu_fold.BatchFold` takes
    (compact entries, or the packed index and float values) and the float64 value table when
    quantised."""

    norms: dict[str, float]
    arrays: tuple
    table: torch.Tensor | None


class ChunkSum:
    """The sum of top-k payloads of one model, kept in the chunk domain.

    On the CPU (for the wire formats `cpu_fold.supported` accepts) preparing a peer is one
    compiled pass that validates and counts, and peers are added in batches (`cpu_fold`);
    elsewhere both are torch operations, one peer at a time. The results are identical: each
    position receives the same float32 additions in the same peer order.
    """

    def __init__(
        self,
        compressor,
        plan,
        device: torch.device | str,
        *,
        compiled: bool | None = None,
        batch: int | None = None,
        peers: int | None = None,
    ) -> None:
        """`compiled`: use the CPU kernels (None: whenever the device and format allow);
        `batch`: peers per compiled fold (None: as many as `cpu_fold.BATCH_BYTES` holds, in
        equal batches when the number of `peers` expected is known)."""
        self._compressor = compressor
        self._plan = plan
        self._device = torch.device(device)
        numel = sum(m.numel for m in plan.params)
        self._starts = {}
        start = 0
        for m in plan.params:
            self._starts[m.name] = start
            start += m.numel
        params = compressor.params
        self._batch: cpu_fold.BatchFold | None = None
        if compiled is None:
            compiled = self._device.type == "cpu" and cpu_fold.supported(params)
        # Without the DCT the compiled fold adds straight into each parameter's row-major
        # layout, so the result needs no reordering; the DCT's inverse needs whole chunks.
        self._row_major = bool(compiled) and not params.use_dct
        if compiled:
            if self._device.type != "cpu" or not cpu_fold.supported(params):
                raise ValueError("the compiled sum needs the CPU and a format cpu_fold supports")
            lay = cpu_fold.layout(plan, row_major=self._row_major)
            self._batch = cpu_fold.BatchFold(lay, plan, params, batch, peers=peers)
            # A kept buffer, not zeroed here: the first batch clears each band as it first
            # reaches it, while the band is in the cache anyway.
            self._buf = torch.from_numpy(BUFFERS.take(numel))
        elif self._device.type == "cpu":
            # numpy's zeros is calloc: the pages are zeroed as the fold first touches them,
            # instead of by a memset of the whole model up front and then again on touch.
            self._buf = torch.from_numpy(np.zeros(numel, np.float32))
        else:
            self._buf = torch.zeros(numel, device=self._device)
        if not compiled:
            self._rows = plan._cached(self._device, "chunk_rows", self._make_rows)

    @property
    def queues(self) -> bool:
        """Whether `commit` only queues the peer for a batched fold (`cpu_fold.BatchFold`)."""
        return self._batch is not None

    def busy(self):
        """A future to await before the next `commit`, when that commit would otherwise
        wait for a batch still being folded (see `cpu_fold.BatchFold.busy`); else None."""
        return None if self._batch is None else self._batch.busy()

    def _make_rows(self, device: torch.device) -> torch.Tensor:
        parts = []
        for m in self._plan.params:
            chunk = torch.arange(m.n_chunks, dtype=torch.int64).repeat_interleave(m.k)
            parts.append(self._starts[m.name] + chunk * m.chunk_size)
        return torch.cat(parts).to(device)

    @torch.no_grad()
    def prepare(self, compressed: Compressed) -> Prepared | Scanned:
        """Everything of a peer's fold that does not touch the sum (safe to run in parallel).

        On the CPU path this validates too: `InvalidPayload` for what the codec refuses."""
        if self._batch is None:
            return self._prepare_torch(compressed)
        t = compressed.tensors
        p = self._compressor._params_of(compressed)
        scanned = self._compressor.scans.take(t)  # the codec's check of this very payload
        if scanned is None:
            scanned = cpu_fold.scan(self._plan, p, t)
        # numpy, not torch, for these small tables: its operations keep the GIL, where each
        # torch call lets it go and must queue for it again behind the S3 threads.
        if p.quantized:
            shift = t["shift"].numpy().astype(np.float64)
            table = t["lookup"].numpy().astype(np.float64) + shift[:, None]
            squares = _squares(scanned.found, table)
            return Scanned(self._norms(squares), (scanned.entries,), table)
        idx = t["idx"] if scanned.packed is None else scanned.packed
        return Scanned(self._norms(scanned.found), (idx, t["val"]), None)

    def _prepare_torch(self, compressed: Compressed) -> Prepared:
        plan, t, dev = self._plan, compressed.tensors, self._device
        p = self._compressor.params
        entries = plan.total_entries
        local = self._compressor.local_indices(compressed, dev)
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
            squares = _squares(counts, table)
            return Prepared(self._norms(squares), index, codes.to(torch.uint8), table)
        vals = t["val"].to(dev, torch.float32)
        # As the compiled scan squares: in float32 (sums exact in any order), in float64 where
        # the float32 square overflows (past 1.8e19).
        square = vals.square()
        square = torch.where(torch.isinf(square), vals.double().square(), square.double())
        squares = torch.bincount(ids, weights=square, minlength=len(plan.params))
        return Prepared(self._norms(squares), index, vals, None)

    @torch.no_grad()
    def commit(self, prepared: Prepared | Scanned, weigh: Weigh) -> dict[str, float]:
        """Add a prepared peer with per-parameter weights `weigh(norms)`; returns the norms.

        On the CPU path the addition may wait in the batch until it fills or `result()`."""
        plan, dev = self._plan, self._device
        weights = weigh(prepared.norms)
        if isinstance(prepared, Scanned):
            assert self._batch is not None
            # float32 weights, as torch.tensor makes them on the torch path, then the same
            # float64 products rounded to float32.
            per_param = np.array([float(weights[m.name]) for m in plan.params], np.float32)
            if prepared.table is not None:
                table = (prepared.table * per_param.astype(np.float64)[:, None]).astype(np.float32)
            else:
                table = per_param
            self._batch.add(prepared.arrays, table, self._buf.numpy())
            return prepared.norms
        per_param = torch.tensor([float(weights[m.name]) for m in plan.params], device=dev)
        ids = plan.param_ids(dev)
        if prepared.table is not None:
            bins = prepared.table.shape[1]
            weighted = (prepared.table * per_param.to(torch.float64)[:, None]).to(torch.float32)
            values = weighted.reshape(-1)[ids * bins + prepared.values]
        else:
            values = prepared.values * per_param[ids]
        # scatter_add_ beats index_add_ here (measured ~3.4 ms against ~5.5 ms for 400K entries)
        self._buf.scatter_add_(0, prepared.index.to(torch.int64), values)
        return prepared.norms

    def fold(self, compressed: Compressed, weigh: Weigh) -> dict[str, float]:
        return self.commit(self.prepare(compressed), weigh)

    def _norms(self, squares: np.ndarray | torch.Tensor) -> dict[str, float]:
        """Each parameter's norm from its sum of squares (float64, numpy or torch).

        Python's (correctly rounded) square root on both paths, so that they agree to the
        bit: torch's vectorised one missed the last bit for ~1.5% of float64 inputs here
        (measured; numpy's matched Python's), and a torch call here would let the GIL go on
        the CPU path, which runs on the event loop.
        The DCT is orthonormal, so chunk-domain norms are the parameters' norms."""
        roots = map(math.sqrt, squares.tolist())
        return dict(zip((m.name for m in self._plan.params), roots, strict=True))

    @torch.no_grad()
    def result(self, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """The sum (times `scale`) per parameter, as views into the sum's own buffer.

        The compiled path without the DCT folded into the parameters' own layout already,
        and scaled during its last batch. Otherwise each parameter is turned from chunk rows
        into its own layout in place, through a copy of that one parameter, so the peak is
        the sum plus the largest parameter, not two models.
        """
        scaled = False
        if self._batch is not None:
            fused = scale if self._row_major else 1.0
            flushed = self._batch.flush(self._buf.numpy(), both_cores=True, scale=fused)
            scaled = flushed and self._row_major
            if not self._batch.cleared:  # no peer was added: the kept buffer is not clear
                self._buf.zero_()
            self._batch.release()
        out: dict[str, torch.Tensor] = {}
        if self._row_major:
            if not scaled and scale != 1.0:
                self._buf.mul_(scale)
            for m in self._plan.params:
                start = self._starts[m.name]
                out[m.name] = self._buf[start : start + m.numel].view(m.shape)
            self._buf = torch.zeros(0)
            return out
        use_dct = self._compressor.params.use_dct
        for m in self._plan.params:
            region = self._buf[self._starts[m.name] : self._starts[m.name] + m.numel]
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
        self._buf = torch.zeros(0, device=self._device)  # the sum is handed over, once
        return out


def _squares(counts, table):
    """Each parameter's sum of squared values from its code counts, bin by bin in order: the
    same additions in the same order on the torch and the numpy side (bit-identical norms)."""
    squares = counts[:, 0] * table[:, 0] ** 2
    for j in range(1, table.shape[1]):
        squares = squares + counts[:, j] * table[:, j] ** 2
    return squares


def make_sum(
    compressor: Compressor,
    shapes: Mapping[str, Shape],
    device: torch.device | str = "cpu",
    *,
    peers: int | None = None,
) -> DenseSum | ChunkSum:
    """The fastest running sum this compressor supports (`peers`: how many are expected)."""
    own = getattr(compressor, "chunk_sum", None)
    if own is not None:
        return own(shapes, device, peers=peers)
    return DenseSum(compressor, shapes, device)
