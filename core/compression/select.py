"""The encoder's fused CPU selection: magnitude, per-chunk top-k, rising order and the index
stream in one compiled pass over each parameter, chunks split over threads.

`torch.topk` over chunk rows needs the chunks first copied out of the parameter (a strided
rearrange of the whole gradient), then a full sort network per row. Here each chunk is read
in place, its k largest magnitudes found through a threshold (`select_parameter`), and the
kept indices written in rising order, with their values, straight into the entry stream,
and, for the Elias-Fano code, the chunk's bytes of the index stream.

Ties in magnitude keep the earlier position. `torch.topk` leaves ties unspecified, so the
torch path (CUDA) may keep another entry of equal magnitude; without ties the two select
the same entries (tested). A NaN ranks with the largest magnitudes, as in torch.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from core.compression import elias_fano
from core.compression.chunking import Plan

__all__ = ["WARMUP", "select", "select_parameter", "selectable"]


@njit(nogil=True, cache=True)
def select_parameter(src, cols, h, w, k, c0, c1, first, local, values, stream, geo_row):
    """Chunks c0..c1-1 of one parameter (`src`: its row-major float32 values, `cols` per
    row; chunks h x w in grid order): each chunk's k largest magnitudes, as rising
    within-chunk indices at local[first + c*k ...] and their values at values[...]; when
    `stream` is not empty, also the chunk's Elias-Fano bytes (geo_row: the parameter's
    `elias_fano.geometry` row).

    Per chunk: its magnitudes, copied out contiguously; a floor that at least k of them
    reach (the smallest of the maxima of k disjoint groups); the few candidates at or above
    it, whose k-th largest is the threshold; then, in position order, every entry above the
    threshold and the earliest ones equal to it. Only the candidates (a few times k) are
    partitioned, and the result comes out in rising order without a sort."""
    size = h * w
    gx = cols // w
    mags = np.empty(size, np.float32)
    cand = np.empty(size, np.int64)
    cand_mags = np.empty(size, np.float32)
    group = size // k
    low, per_chunk, start = geo_row[4], geo_row[6], geo_row[7]
    low_mask = (np.int64(1) << low) - 1
    for c in range(c0, c1):
        cy = c // gx
        base = cy * h * cols + (c - cy * gx) * w
        for i in range(h):
            row = base + i * cols
            for j in range(w):
                m = abs(src[row + j])
                # NaN ranks with the largest, as in torch.topk: a diverged gradient is
                # sent as it is and refused by its receivers (non_finite).
                mags[i * w + j] = m if m == m else np.inf
        floor = np.float32(np.inf)
        for g in range(k):
            top = np.float32(-1.0)
            for n in range(g * group, (g + 1) * group):
                if mags[n] > top:
                    top = mags[n]
            floor = min(floor, top)
        count = 0
        for n in range(size):
            if mags[n] >= floor:
                cand[count] = n
                cand_mags[count] = mags[n]
                count += 1
        # each of the k groups has its maximum among the candidates: count >= k
        threshold = np.partition(cand_mags[:count], count - k)[count - k]
        above = 0
        for t in range(count):
            above += cand_mags[t] > threshold
        ties = k - above
        e = first + c * k
        taken = 0
        for t in range(count):
            m = cand_mags[t]
            if m > threshold or (m == threshold and ties > 0):
                if not m > threshold:
                    ties -= 1
                local[e + taken] = cand[t]
                taken += 1
        for t in range(k):
            index = local[e + t]
            values[e + t] = src[base + (index // w) * cols + index % w]
        if stream.size:
            chunk = start + c * per_chunk
            stream[chunk : chunk + per_chunk] = 0
            ubit = (chunk + ((k * low + 7) >> 3)) * 8
            for t in range(k):
                index = local[e + t]
                if low:
                    elias_fano._write(stream, chunk * 8 + t * low, index & low_mask)
                elias_fano._write(stream, ubit + (index >> low) + t, 1)


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
            r = np.floor(x + 0.5)
            if r - x == 0.5 and r % 2 == 1:  # half to even, as torch.round
                r -= 1.0
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
            args = (arrays[m.name], m.cols, m.h, m.w, m.k, int(c0), int(c1), m.offset)
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
    return (src, 64, 64, 64, 8, 0, 1, 0, local, values, stream, geo[0])


def _example_quantize():
    values = np.linspace(-1, 1, 16).astype(np.float32)
    starts = np.array([0, 8, 16], np.int64)
    shift = np.empty(2, np.float32)
    lookup = np.empty((2, 4), np.float32)
    return (values, starts, 4, 6.0, 2, np.empty(4, np.uint8), shift, lookup)


# (kernel, builder of example arguments): for a warm-up that fills numba's cache.
WARMUP = ((select_parameter, _example), (quantize_packed, _example_quantize))
