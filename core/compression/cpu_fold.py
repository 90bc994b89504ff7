"""The CPU path of the top-k payload checks and of the chunk-domain sum, on `kernels`.

`supported(params)` says whether a payload format has it (float values, or codes whose bit
width divides 8: every width the defaults use); otherwise, and on other devices, the torch
code in `topk` and `summing` does the same work.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import attrs
import numpy as np
import torch

from core.compression import elias_fano, kernels, packing
from core.compression.chunking import INDEX_BITS, Plan
from core.invalid import InvalidPayload

__all__ = [
    "BatchFold",
    "Layout",
    "Scan",
    "compact_dtype",
    "layout",
    "raise_for",
    "scan",
    "supported",
]

# Peers' wire arrays held for one batched fold: ~32 default payloads of the 25M model.
BATCH_BYTES = 26 << 20
MAX_BATCH = 32
# A larger model's peers may take up to this share of its sum's bytes (both sets together):
# each batch is a pass over the whole sum, and a pass per peer would cost several times what
# folding the peer's own entries costs.
SUM_SHARE = 1 / 12


def supported(params) -> bool:
    return not params.quantized or 8 % params.value_bits == 0


@attrs.frozen(eq=False)
class Layout:
    """A plan as the kernels take it: per parameter, its first entry, chunk count, k, chunk
    size and start in the sum (int64 arrays), and where its chunks lie there.

    `shape` holds per parameter (chunks per grid row gx, grid row stride, grid column
    stride, span of one chunk, start of its offset table in `locs`): chunk c starts at
    start + (c // gx) * row stride + (c % gx) * column stride, covers `span` numbers from
    there, and its entry i lies `locs[table + i]` further on. In the chunk domain each chunk
    is h * w consecutive numbers; in row-major order (`layout(row_major=True)`) the sum is
    the parameters themselves, so the sum needs no reordering at the end.
    """

    offsets: np.ndarray
    n_chunks: np.ndarray
    ks: np.ndarray
    sizes: np.ndarray
    starts: np.ndarray
    shape: np.ndarray
    locs: np.ndarray
    first: int = 0  # the plan's number of the first parameter here

    @property
    def args(self) -> tuple[np.ndarray, ...]:
        return self.offsets, self.n_chunks, self.ks, self.sizes

    @property
    def fold_args(self) -> tuple[np.ndarray, ...]:
        return (*self.args, self.starts, self.shape, self.locs)

    def part(self, lo: int, hi: int) -> Layout:
        """Parameters lo..hi-1 only (each parameter's fields are absolute positions)."""
        arrays = (self.offsets, self.n_chunks, self.ks, self.sizes, self.starts, self.shape)
        return Layout(*(a[lo:hi] for a in arrays), self.locs, first=self.first + lo)

    def halves(self) -> tuple[Layout, ...]:
        """The parameters in two runs of about equal entry counts (one run when a single
        parameter holds most of them)."""
        entries = self.n_chunks * self.ks
        cut = int(np.searchsorted(np.cumsum(entries), entries.sum() / 2)) + 1
        if cut <= 0 or cut >= entries.size:
            return (self,)
        return self.part(0, cut), self.part(cut, entries.size)


def layout(plan: Plan, *, row_major: bool = False) -> Layout:
    def make(_device: torch.device) -> Layout:
        numel = [m.numel for m in plan.params]
        tables: dict[tuple[int, int, int], int] = {}
        locs: list[np.ndarray] = []
        shape = []
        at = 0
        for m in plan.params:
            gx = m.grid[1]
            if row_major:
                line, strides = m.cols, (m.h * m.cols, m.w)
            else:
                line, strides = m.w, (gx * m.chunk_size, m.chunk_size)
            key = (m.h, m.w, line)
            if key not in tables:
                tables[key] = at
                i = np.arange(m.h, dtype=np.int64)[:, None] * line
                locs.append((i + np.arange(m.w, dtype=np.int64)[None, :]).reshape(-1))
                at += m.chunk_size
            span = (m.h - 1) * line + m.w
            shape.append((gx, *strides, span, tables[key]))
        return Layout(
            offsets=np.array([m.offset for m in plan.params], np.int64),
            n_chunks=np.array([m.n_chunks for m in plan.params], np.int64),
            ks=np.array([m.k for m in plan.params], np.int64),
            sizes=np.array([m.chunk_size for m in plan.params], np.int64),
            starts=np.concatenate([[0], np.cumsum(numel)[:-1]]).astype(np.int64),
            shape=np.array(shape, np.int64).reshape(-1, 5),
            locs=np.concatenate(locs),
        )

    key = "kernel_layout/rows" if row_major else "kernel_layout/chunks"
    return plan._cached(torch.device("cpu"), key, make)


def _array(t: torch.Tensor) -> np.ndarray:
    if not t.requires_grad and t.is_contiguous():
        return t.numpy()  # the payload's own tensors: no torch call, no trip through the GIL
    return t.detach().contiguous().numpy()


@attrs.frozen(eq=False)
class Scan:
    """What checking a payload found: code counts per parameter (parameters x bins) and the
    compact entries when quantised; each parameter's sum of squares when not, and, for an
    Elias-Fano payload, its indices 12-bit packed (what the float fold reads)."""

    found: np.ndarray
    entries: np.ndarray | None
    packed: np.ndarray | None = None


def scan(plan: Plan, params, tensors, *, on_loop: bool = False) -> Scan:
    """Check a payload's indices (and codes) and gather what its norms and its fold need.

    `on_loop`: the caller is an event loop's thread, so the kernels that keep the GIL run
    (see `kernels.HOLDING`). Raises `InvalidPayload` as `TopKCompressor.validate` documents.
    """
    lay = layout(plan)
    entries = plan.total_entries
    # The kernels do not check bounds: the arrays must be what the layout says, whoever
    # built the payload.
    if params.quantized:
        values = (torch.uint8, packing.packed_nbytes(entries, params.value_bits))
    else:
        values = (torch.float32, entries)
    stream = params.index_code != "packed"
    idx_bytes = elias_fano.nbytes(plan) if stream else packing.packed_nbytes(entries, INDEX_BITS)
    wanted = {"idx": (torch.uint8, idx_bytes), "val": values}
    for name, (dtype, size) in wanted.items():
        t = tensors[name]
        if t.dtype != dtype or t.dim() != 1 or t.numel() != size or t.device.type != "cpu":
            raise InvalidPayload("malformed", f"{name} is not {size} {dtype} values on the CPU")
    idx = _array(tensors["idx"])
    compact: np.ndarray | None = None
    if stream:
        return _scan_stream(plan, params, idx, _array(tensors["val"]), on_loop)
    checks = kernels.HOLDING if on_loop else kernels.RELEASING
    if params.quantized:
        compact = np.empty(entries, compact_dtype(params))
        checks.decode_compact(idx, _array(tensors["val"]), params.value_bits, compact)
        found = np.zeros((len(plan.params), params.quantization_bins), np.int64)
        status, entry = checks.check_compact(compact, params.quantization_bins, *lay.args, found)
    else:
        found = np.zeros(len(plan.params), np.float64)
        status, entry = checks.scan_values(idx, _array(tensors["val"]), *lay.args, found)
    if status == kernels.OUT_OF_RANGE:
        name = next(m.name for m in reversed(plan.params) if m.offset <= entry)
        raise InvalidPayload(
            "index_out_of_range",
            f"{name}: index {int(kernels._index(idx, entry))} beyond its chunk",
        )
    if status == kernels.DUPLICATE:
        raise InvalidPayload("duplicate_index", "an index repeats within a chunk")
    if status == kernels.BAD_CODE:
        raise InvalidPayload("bad_value_code", "value code beyond quantization_bins")
    return Scan(found, compact)


def _scan_stream(plan: Plan, params, idx: np.ndarray, val: np.ndarray, on_loop: bool) -> Scan:
    """`scan` for Elias-Fano indices: decoded straight into the compact entries the fold
    reads (quantised), or into the 12-bit packed index the float fold reads."""
    geo = elias_fano.geometry(plan)
    checks = elias_fano.HOLDING if on_loop else elias_fano.RELEASING
    if params.quantized:
        compact = np.empty(plan.total_entries, compact_dtype(params))
        found = np.zeros((len(plan.params), params.quantization_bins), np.int64)
        status, entry = checks.decode_compact(
            idx, val, params.value_bits, params.quantization_bins, geo, compact, found
        )
        raise_for(plan, status, entry, stream=True)
        return Scan(found, compact)
    local = np.empty(plan.total_entries, np.uint16)
    status, entry = checks.decode_indices(idx, geo, local)
    raise_for(plan, status, entry, stream=True)
    lay = layout(plan)
    packed = packing.pack(torch.from_numpy(local.astype(np.int32)), INDEX_BITS).numpy()
    found = np.zeros(len(plan.params), np.float64)
    values = kernels.HOLDING if on_loop else kernels.RELEASING
    status, entry = values.scan_values(packed, val, *lay.args, found)
    if status != kernels.OK:  # the decoder let through only rising indices in range
        raise InvalidPayload("malformed", f"decoded indices failed their check ({status})")
    return Scan(found, None, packed)


_STREAM_REASONS = {
    elias_fano.OUT_OF_RANGE: ("index_out_of_range", "an index runs past its chunk"),
    elias_fano.NOT_RISING: ("index_not_rising", "indices do not rise within a chunk"),
    elias_fano.COUNT: (
        "index_count_mismatch",
        "a chunk's upper bits do not hold exactly k entries",
    ),
    elias_fano.TRAILING: ("trailing_bits", "set bits in a chunk's padding"),
    elias_fano.BAD_CODE: ("bad_value_code", "value code beyond quantization_bins"),
}


def raise_for(plan: Plan, status: int, entry: int, *, stream: bool) -> None:
    """`InvalidPayload` for a decoder's verdict, naming the parameter of `entry`."""
    if status == elias_fano.OK:
        return
    reason, text = _STREAM_REASONS.get(status, ("malformed", f"decoder status {status}"))
    name = next((m.name for m in reversed(plan.params) if m.offset <= entry), "?")
    raise InvalidPayload(reason, f"{name}: {text} (entry {entry})")


def compact_dtype(params) -> type:
    """One integer per entry: its index in the low 12 bits, its code above them."""
    return np.uint16 if params.value_bits <= 4 else np.uint32


class BatchFold:
    """Peers waiting to be added to a sum, added a batch at a time (see `kernels`: one pass
    over the sum per batch instead of per peer).

    A quantised peer waits as its `compact` entries and its float32 weighted value table
    (parameters x bins); a float peer as its packed index, its values and its per-parameter
    weights. The first batch clears each chunk of the sum as it first reaches it, so the sum
    needs no zeroing beforehand; the last one (`flush(scale=)`) scales each chunk as it
    leaves it.

    A full batch is folded on a thread of its own while the next one fills, in a second set
    of arrays: the caller (the gather's fold) does not wait for the pass over the sum, so
    the fetches it holds back keep going. The two sets together hold `BATCH_BYTES`, or
    `SUM_SHARE` of the sum where that is more, so that a large model's batches still hold
    several peers.
    """

    def __init__(
        self, lay: Layout, plan: Plan, params, batch: int | None = None, *, peers: int | None = None
    ) -> None:
        self._params = params
        self._layout = lay
        entries, n_params = plan.total_entries, len(plan.params)
        if params.quantized:
            self._columns = [((entries,), compact_dtype(params))]
            self._table_shape: tuple[int, ...] = (n_params, params.quantization_bins)
        else:
            idx_bytes = packing.packed_nbytes(entries, INDEX_BITS)
            self._columns = [((idx_bytes,), np.uint8), ((entries,), np.float32)]
            self._table_shape = (n_params,)
        per_peer = sum(shape[0] * np.dtype(dtype).itemsize for shape, dtype in self._columns)
        if batch is None:
            sum_bytes = 4 * sum(m.numel for m in plan.params)  # float32
            budget = max(BATCH_BYTES, int(sum_bytes * SUM_SHARE))
            batch = max(1, min(MAX_BATCH, budget // 2 // max(1, per_peer)))
            if peers:
                # Equal batches: a last batch of a few peers would cost nearly a full pass
                # over the sum for them alone (64 peers: 32 + 32, not 31 + 31 + 2).
                batch = -(-peers // -(-peers // batch))
        self.batch = max(1, min(MAX_BATCH, batch))
        self._expected = peers
        self._added = 0
        self._sets: list[tuple[list[np.ndarray], np.ndarray]] = []
        self._filling = 0
        self._count = 0
        self._running: Future | None = None
        self._failed: BaseException | None = None
        self.cleared = False  # whether a flush has cleared the sum yet

    def add(self, arrays, table: torch.Tensor, out: np.ndarray, *, on_loop: bool) -> None:
        """Queue one validated peer (its arrays in the order the class doc gives, and its
        float32 table or weights); a full batch starts folding into `out` in the
        background, except the last expected peer's, which waits for the final `flush` so
        that the scale is applied on the way. `on_loop`: the caller is an event loop's
        thread."""
        self._healthy()
        columns, tables = self._set(self._filling)
        i = self._count
        # numpy lets the GIL go to copy a large array; an event loop's thread then queues to
        # get it back (see kernels.HOLDING), so there the copy is compiled and keeps it.
        for column, array in zip(columns, arrays, strict=True):
            source = array.numpy() if isinstance(array, torch.Tensor) else array
            if on_loop:
                if not kernels.copy_held(column[i], source):
                    raise ValueError(f"{source.shape} entries do not fit a row of {column.shape}")
            else:
                column[i] = source
        tables[i] = table.numpy() if isinstance(table, torch.Tensor) else table
        self._count += 1
        self._added += 1
        if self._count == self.batch and self._added != self._expected:
            self._join()  # the other set's fold: it must be done before that set refills
            job = self._job(self._filling, self._count, out, self._layout, 1.0)
            self._running = Future()
            threading.Thread(target=_settle, args=(self._running, job), daemon=True).start()
            self._filling, self._count = 1 - self._filling, 0

    def busy(self) -> Future | None:
        """The background fold that the next `add` would wait for, if any: a caller on an
        event loop awaits it first (`asyncio.wrap_future`) instead of blocking the loop."""
        fills = self._count + 1 == self.batch and self._added + 1 != self._expected
        running = self._running
        return running if fills and running is not None and not running.done() else None

    def flush(self, out: np.ndarray, *, both_cores: bool = False, scale: float = 1.0) -> bool:
        """Finish any background fold, then add every queued peer into `out`, times `scale`;
        False when nothing was queued (and so nothing was scaled).

        `both_cores`: fold the two halves of the parameters at once, one on a helper thread
        (the halves write disjoint parts of `out`). For the last flush of a gather, when
        nothing else is left to run; during a gather the other core is busy decoding and the
        split only adds overhead (measured).
        """
        self._join()
        n, self._count = self._count, 0
        if n == 0:
            return False
        halves = self._layout.halves() if both_cores else (self._layout,)
        jobs = [self._job(self._filling, n, out, half, scale) for half in halves]
        if len(jobs) == 1:
            jobs[0]()
            return True
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fold-half") as helper:
            other = helper.submit(jobs[1])
            jobs[0]()
            other.result()
        return True

    def _set(self, index: int) -> tuple[list[np.ndarray], np.ndarray]:
        while len(self._sets) <= index:
            columns = [np.empty((self.batch, *s), d) for s, d in self._columns]
            self._sets.append((columns, np.empty((self.batch, *self._table_shape), np.float32)))
        return self._sets[index]

    def _job(self, index: int, n: int, out: np.ndarray, part: Layout, scale: float):
        """The fold of the first n peers of set `index` over `part` of the parameters.

        Decides here, in order, whether this pass is the one that clears the sum."""
        zero = not self.cleared
        if part.first + part.offsets.size == len(self._layout.offsets):
            self.cleared = True  # both halves of a split pass clear (set after the last)
        columns, tables = self._set(index)
        tables = tables[:, part.first : part.first + part.offsets.size]
        args = (*part.fold_args, tables, zero, np.float32(scale), out)
        if self._params.quantized:
            return functools.partial(kernels.fold, columns[0], n, *args)
        return functools.partial(kernels.fold, tuple(columns), n, *args)

    def _healthy(self) -> None:
        if self._failed is not None:  # a batch is missing from the sum: it must not be used
            raise RuntimeError("an earlier batch failed to fold") from self._failed

    def _join(self) -> None:
        self._healthy()
        running, self._running = self._running, None
        if running is not None:
            try:
                running.result()
            except BaseException as exc:
                self._failed = exc
                raise

    def release(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.exception()  # wait for it; whoever asked for the result saw any error
        self._sets, self._count = [], 0


def _settle(future: Future, job) -> None:
    try:
        job()
    except BaseException as exc:  # handed to whoever waits for this fold
        future.set_exception(exc)
    else:
        future.set_result(None)
