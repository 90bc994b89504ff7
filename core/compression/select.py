"""The encoder's fused CPU selection: magnitude, per-chunk top-k, rising order and the index
stream in one compiled pass over each parameter, chunks split over threads.

`torch.topk` over chunk rows needs the chunks first copied out of the parameter (a strided
rearrange of the whole gradient), then a full sort network per row. Here each chunk is read
in place, its k largest magnitudes found through a threshold (`select_parameter`), and the
kept indices written in rising order, with their values, straight into the entry stream,
and, for the Elias-Fano code, the chunk's bytes of the index stream.

Magnitudes are compared as the bits of the float32 with the sign cleared (`_key`): for
numbers that order is the order of the magnitudes, integer compares vectorise where float
ones with a NaN check do not, and the threshold is found by a histogram of those bits.

Ties in magnitude keep the earlier position. `torch.topk` leaves ties unspecified, so the
torch path (CUDA) may keep another entry of equal magnitude; without ties the two select
the same entries (tested). A NaN ranks with the largest magnitudes (as infinity), as in
torch.

numba checks a signed index for wrap-around unless it comes from a `range`, and a loop with
that check does not vectorise: the hot loops below index slices with their `range` index.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from core.compression import elias_fano
from core.compression.bits import trailing_zeros
from core.compression.chunking import Plan

__all__ = ["WARMUP", "select", "select_parameter", "selectable"]

_MAGNITUDE = np.int32(0x7FFFFFFF)
_INF = np.int32(0x7F800000)  # the key of an infinity; a NaN's bits are above it
# Chunks whose segment maxima one pass reads together: their rows are contiguous in memory
# (a run the prefetcher follows), and the run stays in the L2 cache for the second pass.
_BLOCK = 16
_BINS = 256  # histogram of the threshold search, 8 bits of the key a round
_SMALL = 24  # at most this many keys left: sorted instead of another round


@njit(nogil=True, cache=True, inline="always")
def _key(bits):
    """The magnitude of a float32 given as its int32 bits, as an int32 that orders as the
    magnitudes do; a NaN ranks as infinity."""
    return min(bits & _MAGNITUDE, _INF)


def segments_per_row(h: int, w: int, k: int) -> int:
    """q, the pieces of w // q entries each chunk row is cut into: the fewest (q divides w)
    that give at least 2k pieces in a chunk, else w (every entry its own piece)."""
    for q in range(1, w + 1):
        if w % q == 0 and h * q >= 2 * k:
            return q
    return w


@njit(nogil=True, cache=True, inline="always")
def _max_key(r, n):
    """The largest key of r[:n]."""
    top = np.int32(0)
    for j in range(n):
        top = max(top, _key(r[j]))
    return top


@njit(nogil=True, cache=True, inline="always")
def _mask_at_least(r, n, floor):
    """Bit j set for each j < n (<= 64) whose key r[j] is at least `floor`."""
    mask = np.uint64(0)
    for j in range(n):
        mask |= np.uint64(_key(r[j]) >= floor) << np.uint64(j)
    return mask


@njit(nogil=True, cache=True, inline="always")
def _segment_maxima(bits, sbase, cols, h, w, q, n, out):
    """out[b, i * q + s]: the largest key of piece s of row i of the b-th of n side-by-side
    chunks whose first element is bits[sbase], read row by row across the n chunks."""
    size = w // q
    for i in range(h):
        seg = bits[sbase + i * cols : sbase + i * cols + n * w]
        for b in range(n):
            o = out[b]
            for s in range(q):
                start = b * w + s * size
                o[i * q + s] = _max_key(seg[start : start + size], size)


@njit(nogil=True, cache=True, inline="always")
def _kth_largest(keys, n, need, lo, hi, hist, scratch):
    """(the need-th largest of keys[:n], all in lo..hi; how many of the need largest equal
    it). A histogram of (key - lo) >> shift over _BINS bins finds the bin of the need-th
    largest, then the same within that bin's keys with 8 bits less of shift, until one
    key is left or few enough keys to sort. May overwrite `scratch` (and read it as keys)."""
    low = np.int64(lo)
    span = np.int64(hi) - low
    shift = 0
    while (span >> shift) >= _BINS:
        shift += 1
    while n > _SMALL:
        hist[:] = 0
        for t in range(n):
            hist[(keys[t] - low) >> shift] += 1
        b = span >> shift
        above = 0
        while above + hist[b] < need:
            above += hist[b]
            b -= 1
        need -= above
        if shift == 0:  # the bin is one key
            return low + b, need
        m = 0
        for t in range(n):
            key = keys[t]
            scratch[m] = key
            m += (key - low) >> shift == b
        keys = scratch
        n = m
        low += b << shift
        span = (np.int64(1) << shift) - 1
        shift = max(shift - 8, 0)
    # insertion sort, largest first, into scratch (keys may be scratch already)
    for t in range(n):
        key = keys[t]
        u = t
        while u > 0 and scratch[u - 1] < key:
            scratch[u] = scratch[u - 1]
            u -= 1
        scratch[u] = key
    kth = scratch[need - 1]
    ties = 0
    for t in range(need):
        ties += scratch[t] == kth
    return kth, ties


@njit(nogil=True, cache=True, inline="always")
def _with_floor(
    src, bits, base, maxima, floor, ties, piece, piece_pos, piece_off, local, values, e
):
    """The chunk's kept entries when its threshold is the floor, in position order: every
    entry above it, and the first `ties` equal to it."""
    taken = 0
    for t in range(maxima.size):
        if maxima[t] < floor:
            continue
        r = bits[base + piece_off[t] : base + piece_off[t] + piece]
        mask = _mask_at_least(r, piece, floor if ties > 0 else floor + 1)
        while mask:
            j = np.int64(trailing_zeros(mask))
            mask &= mask - np.uint64(1)
            if _key(r[j]) == floor:
                if ties == 0:
                    continue
                ties -= 1
            local[e + taken] = piece_pos[t] + j
            values[e + taken] = src[base + piece_off[t] + j]
            taken += 1


@njit(nogil=True, cache=True)
def select_parameter(src, cols, h, w, k, q, c0, c1, first, local, values, stream, geo_row):
    """Chunks c0..c1-1 of one parameter (`src`: its row-major float32 values, `cols` per
    row; chunks h x w in grid order, w <= 64): each chunk's k largest magnitudes, as rising
    within-chunk indices at local[first + c*k ...] and their values at values[...]; when
    `stream` is not empty, also the chunk's Elias-Fano bytes (geo_row: the parameter's
    `elias_fano.geometry` row). q: `segments_per_row(h, w, k)`.

    Per chunk: the maxima of its h * q pieces (read for _BLOCK chunks at a time) and the
    k-th largest of those, a floor that at least k entries reach (the maxima of k
    different pieces); the candidates above it, from the pieces whose maximum is; when
    there are k or more, their k-th largest is the threshold, else the floor is; then, in
    position order, every entry above the threshold and the earliest ones equal to it. The
    result comes out in rising order without a sort."""
    size = h * w
    gx = cols // w
    piece = w // q
    bits = src.view(np.int32)
    maxima = np.empty((_BLOCK, h * q), np.int32)
    pos = np.empty(size, np.int64)
    off = np.empty(size, np.int64)
    ckeys = np.empty(size, np.int32)
    keep = np.empty(k + 1, np.int64)  # the loop below writes one past the last kept
    scratch = np.empty(size, np.int32)
    hist = np.empty(_BINS, np.int32)
    pieces = np.empty(h * q, np.int64)
    piece_pos = np.empty(h * q, np.int64)  # a piece's first within-chunk index
    piece_off = np.empty(h * q, np.int64)  # and its offset from the chunk's first element
    for i in range(h):
        for s in range(q):
            piece_pos[i * q + s] = i * w + s * piece
            piece_off[i * q + s] = i * cols + s * piece
    c = c0
    while c < c1:
        cy = c // gx
        x0 = c - cy * gx
        n = min(_BLOCK, gx - x0, c1 - c)
        sbase = cy * h * cols + x0 * w
        _segment_maxima(bits, sbase, cols, h, w, q, n, maxima)
        for b in range(n):
            base = sbase + b * w
            mx = maxima[b]
            lo = _INF
            hi = np.int32(0)
            for t in range(h * q):
                lo = min(lo, mx[t])
                hi = max(hi, mx[t])
            floor, _ = _kth_largest(mx, h * q, k, lo, hi, hist, scratch)
            # Candidates: the entries above the floor, from the pieces whose maximum is.
            above = floor + 1
            hot = 0
            for t in range(h * q):
                pieces[hot] = t
                hot += mx[t] >= above
            count = 0
            for u in range(hot):
                t = pieces[u]
                r = bits[base + piece_off[t] : base + piece_off[t] + piece]
                mask = _mask_at_least(r, piece, above)
                while mask:
                    j = np.int64(trailing_zeros(mask))
                    mask &= mask - np.uint64(1)
                    pos[count] = piece_pos[t] + j
                    off[count] = piece_off[t] + j
                    ckeys[count] = _key(r[j])
                    count += 1
            e = first + (c + b) * k
            if count >= k:
                threshold, ties = _kth_largest(ckeys, count, k, above, hi, hist, scratch)
                taken = 0
                for t in range(count):
                    key = ckeys[t]
                    tie = key == threshold
                    take = (key > threshold) | (tie & (ties > 0))
                    ties -= tie & take
                    keep[taken] = t
                    taken += take
                for t in range(k):
                    local[e + t] = pos[keep[t]]
                    values[e + t] = src[base + off[keep[t]]]
            else:
                # The floor is the k-th largest (many equal magnitudes: zeros, say): every
                # candidate and the earliest k - count entries equal to the floor.
                _with_floor(src, bits, base, mx, floor, k - count, piece, piece_pos, piece_off,
                            local, values, e)  # fmt: skip
            if stream.size:
                elias_fano._write_chunk(stream, geo_row, c + b, local, e)
        c += n


# error_model="numpy": a parameter of one value divides by zero and takes the fallback
# scale, as in torch, instead of raising.
@njit(nogil=True, cache=True, error_model="numpy")
def quantize_packed(values, starts, bins, sigmas, width, packed, shift, lookup):
    """`core.compression.quantize.quantize` for the fused encoder, with the codes packed
    at `width` (which divides 8) into `packed` as they are made. Parameter p's values are
    values[starts[p]:starts[p + 1]]. The same arithmetic in the same order as the torch
    version: float64 sums in entry order, the centred values and the scale rounded to
    float32, codes rounded half to even (tested equal, tensor for tensor)."""
    offset = bins // 2
    packed[:] = 0
    sums = np.zeros(bins, np.float64)
    counts = np.zeros(bins, np.float64)
    for p in range(starts.size - 1):
        lo, hi = starts[p], starts[p + 1]
        total = 0.0
        for e in range(lo, hi):
            total += np.float64(values[e])
        mean = total / max(hi - lo, 1)
        squares = 0.0
        for e in range(lo, hi):
            c = np.float64(np.float32(np.float64(values[e]) - mean))
            squares += c * c
        sigma = np.sqrt(squares) / np.sqrt(np.float64(hi - lo - 1))
        scale = np.float32(sigmas * sigma / bins)
        if not np.isfinite(scale) or scale == 0:
            scale = np.float32(1.0)
        sums[:] = 0.0
        counts[:] = 0.0
        for e in range(lo, hi):
            c = np.float32(np.float64(values[e]) - mean)
            x = np.float64(np.float32(np.float32(c / scale) + np.float32(offset)))
            if np.isnan(x):
                x = np.float64(offset)
            r = np.rint(x)  # half to even, as torch.round
            code = np.int64(min(max(r, 0.0), bins - 1))
            sums[code] += np.float64(c)
            counts[code] += 1.0
            bit = e * width
            packed[bit >> 3] |= np.uint8(code << (bit & 7))
        shift[p] = np.float32(mean)
        for b in range(bins):
            lookup[p, b] = np.float32(sums[b] / counts[b]) if counts[b] > 0 else np.float32(0.0)


def selectable(grads, use_dct: bool) -> bool:
    """Whether the fused CPU pass can encode these gradients (else the torch path does)."""
    if use_dct:
        return False
    return all(t.device.type == "cpu" and not t.requires_grad for t in grads.values())


_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="topk-select")


def select(plan: Plan, arrays: dict[str, np.ndarray], coded: bool, threads: int = 2):
    """Every chunk's kept entries: (local indices int64, float32 values, Elias-Fano stream
    or None), the chunks split into `threads` runs of about equal size."""
    local = np.empty(plan.total_entries, np.int64)
    values = np.empty(plan.total_entries, np.float32)
    stream = np.empty(elias_fano.nbytes(plan) if coded else 0, np.uint8)
    geo = elias_fano.geometry(plan)
    jobs = []
    for p, m in enumerate(plan.params):
        # Cut parameters so that each thread gets about the same number of entries.
        parts = max(1, min(threads, m.n_chunks * m.chunk_size // 65536))
        cuts = np.linspace(0, m.n_chunks, parts + 1).astype(np.int64)
        for c0, c1 in itertools.pairwise(cuts):
            q = segments_per_row(m.h, m.w, m.k)
            args = (arrays[m.name], m.cols, m.h, m.w, m.k, q, int(c0), int(c1), m.offset)
            jobs.append((*args, local, values, stream, geo[p]))
    if threads <= 1:
        for job in jobs:
            select_parameter(*job)
    else:
        halves = [jobs[i::threads] for i in range(threads)]
        futures = [_POOL.submit(_run, half) for half in halves[1:]]
        _run(halves[0])
        for f in futures:
            f.result()
    return local, values, stream if coded else None


def _run(jobs) -> None:
    for job in jobs:
        select_parameter(*job)


def _example():
    plan = Plan([("a", (64, 64))], 64, 8)
    geo = elias_fano.geometry(plan)
    src = np.arange(4096, dtype=np.float32)
    local = np.empty(plan.total_entries, np.int64)
    values = np.empty(plan.total_entries, np.float32)
    stream = np.empty(elias_fano.nbytes(plan), np.uint8)
    q = segments_per_row(64, 64, 8)
    return (src, 64, 64, 64, 8, q, 0, 1, 0, local, values, stream, geo[0])


def _example_quantize():
    values = np.linspace(-1, 1, 16).astype(np.float32)
    starts = np.array([0, 8, 16], np.int64)
    shift = np.empty(2, np.float32)
    lookup = np.empty((2, 4), np.float32)
    return (values, starts, 4, 6.0, 2, np.empty(4, np.uint8), shift, lookup)


# (kernel, builder of example arguments): for a warm-up that fills numba's cache.
WARMUP = ((select_parameter, _example), (quantize_packed, _example_quantize))
