"""Compiled CPU loops over the top-k wire stream (numba), for the per-peer work of a gather.

A peer's payload is ~400K entries: an index within its chunk (`chunking.INDEX_BITS` wide)
and a small value code (or a float). Torch does the per-peer work as a dozen vectorised
passes (unpack, compare, sort, bincount, gather, scatter), each allocating an entry-sized
tensor. Here each job is one pass, allocating at most the compact entries:

- `decode_compact` unpacks a quantised payload into one integer per entry, `index | code <<
  INDEX_BITS`; `check_compact` then validates it (index inside its chunk, no index twice in
  a chunk, code within the quantisation bins) and, in the same pass, counts what the norms
  need; `scan_values` does both for float values, from the packed index. A verdict has the
  torch validator's precedence: an index out of range anywhere first, then a repeated
  index, then a bad code. The compact entries are also what the fold reads, so the serial
  fold does no bit work.
- `fold` adds a batch of validated peers into the sum. The sum is a model-sized buffer far
  larger than the caches, and one peer touches ~64 random cache lines in each 16 KB chunk:
  peer by peer, nearly every write is a cache miss. Folding a batch band by band (a row of
  chunks) brings each band into the cache once, in address order, for all peers of the
  batch: a small cost a peer plus one pass over the sum a batch. docs/gather.md has the
  measurements.

Stream layout (core.compression.packing): entry e's index is bits [INDEX_BITS * e,
INDEX_BITS * (e + 1)) of the little-endian bit stream; its code is bits [we, we+w), where
the width w divides 8 here. Entries run parameter by parameter, chunk by chunk, k per
chunk. Callers pass arrays whose lengths the codec has already checked; the fold re-checks
each index against its chunk so that no input can write outside the sum.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import numpy as np
from numba import njit, types
from numba.extending import overload

from core.compression.chunking import INDEX_BITS, INDEX_MASK

__all__ = [
    "BAD_CODE",
    "DUPLICATE",
    "HOLDING",
    "OK",
    "OUT_OF_RANGE",
    "RELEASING",
    "Checks",
    "check_compact",
    "copy_held",
    "decode_compact",
    "fold",
    "scan_values",
]

OK, OUT_OF_RANGE, DUPLICATE, BAD_CODE = 0, 1, 2, 3

# Two packed indices share three bytes: the first is a byte and the low `_SPLIT` bits of the
# next, the second the high bits of that middle byte and the third byte. numba freezes these
# module-level ints into the compiled code.
if INDEX_BITS != 12:  # pragma: no cover - the readers below take two fields from three bytes
    raise ImportError("the kernels read index fields two to three bytes")
_SPLIT = INDEX_BITS - 8
_LOW = (1 << _SPLIT) - 1


@njit(nogil=True, cache=True, inline="always")
def _first(b0, b1):
    return b0 | ((b1 & _LOW) << 8)


@njit(nogil=True, cache=True, inline="always")
def _second(b1, b2):
    return (b1 >> _SPLIT) | (b2 << (8 - _SPLIT))


@njit(nogil=True, cache=True, inline="always")
def _index(idx, e):
    b = 3 * (e >> 1)
    if e & 1:
        return _second(np.int64(idx[b + 1]), np.int64(idx[b + 2]))
    return _first(np.int64(idx[b]), np.int64(idx[b + 1]))


@njit(nogil=True, cache=True, inline="always")
def _code(codes, e, width, mask):
    bit = e * width
    return (np.int64(codes[bit >> 3]) >> (bit & 7)) & mask


@njit(nogil=True, cache=True, inline="always")
def _rising(chunk, k, size):
    """Whether a chunk's indices strictly increase and stay below `size`: then none is out
    of range or repeated, which a vectorised compare shows without the table of indices
    seen. Our encoder sends them so."""
    step = np.int32(1)
    for j in range(1, k):
        step = min(step, np.int32(chunk[j] & INDEX_MASK) - np.int32(chunk[j - 1] & INDEX_MASK))
    return step > 0 and np.int64(chunk[k - 1] & INDEX_MASK) < size


@njit(nogil=True, cache=True, inline="always")
def _tally(entries, bins, tally):
    """Add the code counts of `entries` to `tally`; returns the first entry whose code is
    beyond the bins, or -1. Up to four bins (the default two-bit codes) as four sums the
    compiler vectorises; one counter per bin in memory would chain each increment to the
    last one of the same code (docs/gather.md has the figures)."""
    if bins <= 4:
        c0, c1, c2, c3 = 0, 0, 0, 0
        for e in range(entries.size):
            code = np.int64(entries[e]) >> INDEX_BITS
            c0 += code == 0
            c1 += code == 1
            c2 += code == 2
            c3 += code == 3
        sums = (c0, c1, c2, c3)
        valid = 0
        for b in range(bins):
            valid += sums[b]
        if valid == entries.size:  # every code is one of the bins
            for b in range(bins):
                tally[b] += sums[b]
            return -1
    for e in range(entries.size):
        code = np.int64(entries[e]) >> INDEX_BITS
        if code >= bins:
            return e
    for e in range(entries.size):
        tally[np.int64(entries[e]) >> INDEX_BITS] += 1
    return -1


@njit(cache=True)
def _check_compact(entries, bins, offsets, n_chunks, ks, sizes, counts):
    """Validate a quantised payload from its compact entries (`decode_compact`) and add its
    code counts per parameter to `counts` (parameters x bins). Returns (status, first bad
    entry or -1).

    A parameter whose every chunk rises (`_rising`) needs no table of the indices seen;
    any other parameter is checked entry by entry."""
    seen = np.zeros(sizes.max(), np.int64)
    chunk_id = 0
    found, at = OK, -1
    for p in range(offsets.size):
        size = sizes[p]
        k = ks[p]
        n = n_chunks[p]
        rising = True
        for c in range(n):
            if not _rising(entries[offsets[p] + c * k : offsets[p] + (c + 1) * k], k, size):
                rising = False
                break
        if rising:
            chunk_id += n
            if found == OK:
                bad = _tally(entries[offsets[p] : offsets[p] + n * k], bins, counts[p])
                if bad >= 0:
                    found, at = BAD_CODE, offsets[p] + bad
            continue
        tally = counts[p]
        for c in range(n):
            chunk_id += 1
            first = offsets[p] + c * k
            chunk = entries[first : first + k]
            for j in range(k):
                v = np.int64(chunk[j])
                local = v & INDEX_MASK
                if local >= size:
                    return OUT_OF_RANGE, first + j
                if seen[local] == chunk_id and found != DUPLICATE:
                    found, at = DUPLICATE, first + j
                seen[local] = chunk_id
                code = v >> INDEX_BITS
                if code >= bins:
                    if found == OK:
                        found, at = BAD_CODE, first + j
                elif found == OK:
                    tally[code] += 1
    return found, at


@njit(cache=True)
def _scan_values(idx, vals, offsets, n_chunks, ks, sizes, squares):
    """Validate a float payload's indices and add each parameter's sum of squared values to
    `squares` (float64). Returns (status, first bad entry or -1)."""
    seen = np.zeros(sizes.max(), np.int64)
    chunk_id = 0
    found, at = OK, -1
    for p in range(offsets.size):
        e = offsets[p]
        size = sizes[p]
        total = 0.0
        for _ in range(n_chunks[p]):
            chunk_id += 1
            for _ in range(ks[p]):
                local = _index(idx, e)
                if local >= size:
                    return OUT_OF_RANGE, e
                if seen[local] == chunk_id and found == OK:
                    found, at = DUPLICATE, e
                seen[local] = chunk_id
                v = vals[e]
                # A float32 square, summed in float64, keeps the sum exact whatever the entries'
                # order; past 1.8e19 it overflows, and then the square is taken in float64.
                square = np.float64(v * v)
                if square == np.inf:
                    square = np.float64(v) * np.float64(v)
                total += square
                e += 1
        squares[p] += total
    return found, at


@njit(cache=True)
def _decode_compact(idx, codes, width, out):
    """out[e] = index | code << INDEX_BITS for every entry: the fold's input, unpacked once,
    in the parallel stage, instead of in the serial fold."""
    mask = (1 << width) - 1
    start = 0
    if width == 2:
        # The default format, four entries at a time (six index bytes, one code byte): a
        # branch-free loop LLVM vectorises, several times faster than entry by entry.
        start = out.size - out.size % 4
        for g in range(out.size >> 2):
            b = 6 * g
            i0, i1, i2 = np.uint32(idx[b]), np.uint32(idx[b + 1]), np.uint32(idx[b + 2])
            i3, i4, i5 = np.uint32(idx[b + 3]), np.uint32(idx[b + 4]), np.uint32(idx[b + 5])
            c = np.uint32(codes[g])
            e = 4 * g
            out[e] = _first(i0, i1) | ((c & 3) << INDEX_BITS)
            out[e + 1] = _second(i1, i2) | (((c >> 2) & 3) << INDEX_BITS)
            out[e + 2] = _first(i3, i4) | (((c >> 4) & 3) << INDEX_BITS)
            out[e + 3] = _second(i4, i5) | (((c >> 6) & 3) << INDEX_BITS)
    for e in range(start, out.size):
        out[e] = _index(idx, e) | (_code(codes, e, width, mask) << INDEX_BITS)


# The per-peer checks come twice: releasing the GIL, for worker threads, so that other
# threads run meanwhile; and holding it, for an event loop's thread. A loop thread that lets
# the GIL go for a fraction of a millisecond queues behind the other threads to get it back,
# up to the switch interval each time (docs/gather.md). Separate functions, not two
# dispatchers of one: numba's on-disk cache does not key on nogil.


@njit(nogil=True, cache=True)
def decode_compact(idx, codes, width, out):
    return _decode_compact(idx, codes, width, out)


@njit(cache=True)
def decode_compact_held(idx, codes, width, out):
    return _decode_compact(idx, codes, width, out)


@njit(nogil=True, cache=True)
def check_compact(entries, bins, offsets, n_chunks, ks, sizes, counts):
    return _check_compact(entries, bins, offsets, n_chunks, ks, sizes, counts)


@njit(cache=True)
def check_compact_held(entries, bins, offsets, n_chunks, ks, sizes, counts):
    return _check_compact(entries, bins, offsets, n_chunks, ks, sizes, counts)


@njit(nogil=True, cache=True)
def scan_values(idx, vals, offsets, n_chunks, ks, sizes, squares):
    return _scan_values(idx, vals, offsets, n_chunks, ks, sizes, squares)


@njit(cache=True)
def scan_values_held(idx, vals, offsets, n_chunks, ks, sizes, squares):
    return _scan_values(idx, vals, offsets, n_chunks, ks, sizes, squares)


@njit(cache=True)
def copy_held(out, source):
    """out[:] = source (both 1-D), holding the GIL throughout; False, copying nothing, when
    the lengths differ (nothing here checks bounds)."""
    if out.size != source.size:
        return False
    for i in range(source.size):
        out[i] = source[i]
    return True


@attrs.frozen
class Checks:
    decode_compact: Callable
    check_compact: Callable
    scan_values: Callable


RELEASING = Checks(decode_compact, check_compact, scan_values)
HOLDING = Checks(decode_compact_held, check_compact_held, scan_values_held)


@njit(nogil=True, cache=True, inline="always")
def _enter(band, zero):
    """Bring a band of chunks into the cache in address order, before the scattered adds:
    cleared when `zero`, else read one number per cache line. The adds alone would fetch
    it line by line in random order, which the prefetcher cannot follow. Returns the
    numbers read, so that the reads stay."""
    seen = np.float32(0.0)
    if zero:
        band[:] = 0.0
    else:
        for i in range(0, band.size, 16):
            seen += band[i]
    return seen


def _add_chunk(peers, b, first, k, size, row, loc, table):
    """Add peer b's entries first..first+k-1 into `row` (one chunk); see `fold`."""


@overload(_add_chunk, inline="always")
def _add_chunk_typed(peers, b, first, k, size, row, loc, table):
    # Chosen when `fold` is compiled, by the type of `peers`: no branch in the loop.
    if isinstance(peers, types.BaseTuple):  # (packed indices, float values)

        def add_values(peers, b, first, k, size, row, loc, table):
            idx, vals = peers[0][b], peers[1][b]
            for e in range(first, first + k):
                local = _index(idx, e)
                if local < size:
                    row[loc[local]] += vals[e] * table

        return add_values

    def add_compact(peers, b, first, k, size, row, loc, table):
        peer = peers[b, first : first + k]
        for j in range(k):
            v = np.int64(peer[j])
            local = v & INDEX_MASK
            if local < size:
                row[loc[local]] += table[v >> INDEX_BITS]

    return add_compact


@njit(nogil=True, cache=True)
def fold(peers, count, offsets, n_chunks, ks, sizes, starts, shape, locs, tables, zero, scale, out):
    """Add the first `count` peers of a batch into `out`: out[chunk + locs[index]] +=
    their value.

    `peers` is either the compact entries (peers x entries, from decode_compact) with
    `tables` the weighted value tables (peers x parameters x bins, float32), or a pair
    (packed indices, float values) (peers x bytes, peers x entries) with `tables` the
    weights (peers x parameters, float32).

    `shape` places each parameter's chunks (see `cpu_fold.Layout`); they are visited a band
    at a time: a row of chunks, which is one contiguous stretch of `out` in either layout.
    `zero`: clear each band first (the sum's first batch); `scale` != 1: multiply each band
    by it after the adds (the last batch)."""
    seen = np.float32(0.0)
    for p in range(offsets.size):
        size = sizes[p]
        k = ks[p]
        gx, ystride, xstride, span, loc_at = shape[p]
        loc = locs[loc_at : loc_at + size]
        for cy in range(n_chunks[p] // gx):
            band = out[starts[p] + cy * ystride : starts[p] + (cy + 1) * ystride]
            seen += _enter(band, zero)
            for cx in range(gx):
                # Slices, not offsets into the whole arrays: measurably faster.
                row = band[cx * xstride : cx * xstride + span]
                first = offsets[p] + (cy * gx + cx) * k
                for b in range(count):
                    _add_chunk(peers, b, first, k, size, row, loc, tables[b, p])
            if scale != 1.0:
                band *= scale
    return seen
