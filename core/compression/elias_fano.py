"""Elias-Fano coding of each chunk's kept indices (the `elias_fano` index code).

A chunk keeps k of its s positions, sent in rising order. Elias-Fano splits each index into
`low` bits (its L low bits, L = floor(log2(s / k))) and a high part (index >> L); the low
parts are stored as k fixed L-bit fields, the high parts as a unary bit vector of
k + ((s - 1) >> L) + 1 bits in which entry i sets bit (high_i + i). The size depends only on
(s, k), never on which positions were kept, so every chunk has a fixed place in the stream:
encode and decode run chunk by chunk in any order, the receiver knows the exact size before
it downloads, and a chunk is checked without looking at any other. docs/wire-format.md has
the bit layout and the measured cost against Golomb-Rice.

Stream layout (bit j of the stream is bit j % 8 of byte j // 8, as in `packing`): parameters
in name order, chunks in grid order, each chunk starting on a byte: first its k low fields
(entry i at bits [i*L, i*L + L) of the chunk), zero bits up to the next byte, then its upper
vector, zero bits up to the next byte. (At the defaults neither needs a pad bit.)

The kernels do not check array bounds; `geometry` and the wrappers below check every
array's size against the plan before calling them, and the decoder reads only inside the
chunk it decodes, whatever the bytes say.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import numpy as np
import torch
from numba import njit

from core.compression import bits, ef_default
from core.compression.chunking import INDEX_BITS, Plan
from core.compression.kernels import _code, _tally

__all__ = [
    "BAD_CODE",
    "COUNT",
    "HOLDING",
    "NOT_RISING",
    "OK",
    "OUT_OF_RANGE",
    "RELEASING",
    "TRAILING",
    "WARMUP",
    "Checks",
    "chunk_bytes",
    "geometry",
    "low_bits",
    "nbytes",
]

# Verdicts of the decoders, in the order a chunk is read.
OK, OUT_OF_RANGE, NOT_RISING, COUNT, TRAILING, BAD_CODE = 0, 1, 2, 3, 4, 5

# Columns of the per-parameter geometry array the kernels take.
OFFSET, CHUNKS, K, SIZE, LOW, UPPER, CHUNK_BYTES, START = range(8)


def low_bits(size: int, k: int) -> int:
    """L for k of `size` positions: floor(log2(size / k)), the width that makes the upper
    vector about 2k bits (at most 2k + 1 with the end bit) whatever the positions."""
    return max(0, (size // k).bit_length() - 1) if k else 0


def chunk_bytes(size: int, k: int) -> int:
    """Bytes of one chunk: the low fields, then the upper vector, each padded to a byte."""
    low = low_bits(size, k)
    return (k * low + 7) // 8 + (k + ((size - 1) >> low) + 1 + 7) // 8


def geometry(plan: Plan) -> np.ndarray:
    """Per parameter: first entry, chunks, k, chunk size, L, upper bits, bytes per chunk,
    first byte in the stream (int64, parameters x 8); cached with the plan."""

    def make(_device) -> np.ndarray:
        rows = []
        start = 0
        for m in plan.params:
            low = low_bits(m.chunk_size, m.k)
            upper = m.k + ((m.chunk_size - 1) >> low) + 1
            per_chunk = (m.k * low + 7) // 8 + (upper + 7) // 8
            rows.append((m.offset, m.n_chunks, m.k, m.chunk_size, low, upper, per_chunk, start))
            start += per_chunk * m.n_chunks
        return np.array(rows, np.int64).reshape(-1, 8)

    return plan._cached(torch.device("cpu"), "elias_fano/geometry", make)


def nbytes(plan: Plan) -> int:
    geo = geometry(plan)
    if geo.shape[0] == 0:
        return 0
    return int((geo[:, CHUNK_BYTES] * geo[:, CHUNKS]).sum())


_NO_CODES = np.zeros(0, np.uint8)

# -- kernels -------------------------------------------------------------------------------


@njit(nogil=True, cache=True, inline="always")
def _read(data, bit, width, end):
    """`width` (<= 17) bits of `data` from stream bit `bit`; bytes at or past `end` read as
    zero, so a field is never read beyond its part of the chunk."""
    b = bit >> 3
    v = np.int64(data[b])
    if b + 1 < end:
        v |= np.int64(data[b + 1]) << 8
    if b + 2 < end:
        v |= np.int64(data[b + 2]) << 16
    return (v >> (bit & 7)) & ((np.int64(1) << width) - 1)


@njit(nogil=True, cache=True, inline="always")
def _word(data, at, count):
    """`count` (<= 8) bytes from `at` as a little-endian uint64."""
    v = np.uint64(0)
    for b in range(count):
        v |= np.uint64(data[at + b]) << np.uint64(8 * b)
    return v


@njit(nogil=True, cache=True, inline="always")
def _word8(data, at):
    """Eight bytes from `at` as a little-endian uint64 (unrolled)."""
    return (
        np.uint64(data[at])
        | (np.uint64(data[at + 1]) << np.uint64(8))
        | (np.uint64(data[at + 2]) << np.uint64(16))
        | (np.uint64(data[at + 3]) << np.uint64(24))
        | (np.uint64(data[at + 4]) << np.uint64(32))
        | (np.uint64(data[at + 5]) << np.uint64(40))
        | (np.uint64(data[at + 6]) << np.uint64(48))
        | (np.uint64(data[at + 7]) << np.uint64(56))
    )


@njit(nogil=True, cache=True, inline="always")
def _lows(data, base, k, low, out, first):
    """out[first + i] = the low field of entry i of the chunk at byte `base`."""
    if low == 0:
        for i in range(k):
            out[first + i] = 0
    elif low == 6 and k % 4 == 0:
        # The default geometry (64 of 4096): four fields in three bytes, branch-free.
        for g in range(k >> 2):
            b = base + 3 * g
            x = np.uint32(data[b]) | (np.uint32(data[b + 1]) << 8) | (np.uint32(data[b + 2]) << 16)
            e = first + 4 * g
            out[e] = x & 63
            out[e + 1] = (x >> 6) & 63
            out[e + 2] = (x >> 12) & 63
            out[e + 3] = (x >> 18) & 63
    else:
        end = base + ((k * low + 7) >> 3)
        for i in range(k):
            out[first + i] = _read(data, base * 8 + i * low, low, end)


@njit(nogil=True, cache=True, inline="always")
def _decode_chunk(d, k, low, upper, size, o, highs, codes, width, first):
    """Decode one chunk, its bytes `d`, into its k entries `o`; returns (verdict, entry of
    the chunk it concerns). Slices, not offsets into the whole arrays: an index the
    compiler knows is not negative needs no wraparound, and the loops vectorise. `highs`:
    scratch for the high parts, k + 64 bytes (see `bits.spread_highs`). With a `width`,
    each entry also gets its value code (`codes`, packed at `width`; the chunk's entries
    are first..first+k-1 of them) above INDEX_BITS."""
    low_bytes = (k * low + 7) >> 3
    up_bytes = (upper + 7) >> 3
    # Stray bits past the low fields or the upper vector (the pad up to a byte).
    if (k * low) & 7 and d[low_bytes - 1] >> ((k * low) & 7):
        return TRAILING, 0
    if upper & 7 and d[low_bytes + up_bytes - 1] >> (upper & 7):
        return TRAILING, k - 1
    u = d[low_bytes : low_bytes + up_bytes]
    # A high part fits a byte whenever k < 128 (it is below 2k + 2); otherwise the entries
    # take theirs one by one, after their low fields.
    in_bytes = ((size - 1) >> low) < 255
    if not in_bytes:
        _lows(d, 0, k, low, o, 0)
    n = 0
    for w in range(0, up_bytes, 8):
        v = _word8(u, w) if up_bytes - w >= 8 else _word(u, w, up_bytes - w)
        c = bits.popcount(v)
        if n + c > k:
            return COUNT, k - 1
        if in_bytes:
            bits.spread_highs(v, 8 * w - n, highs, n)
        else:
            for i in range(n, n + c):
                o[i] |= (8 * w + np.int64(bits.trailing_zeros(v)) - i) << low
                v &= v - np.uint64(1)
        n += c
    if n != k:
        return COUNT, max(n - 1, 0)
    vector = (
        in_bytes
        and k == ef_default.K
        and low == ef_default.LOW
        and width == ef_default.CODE_BITS
        and first % 4 == 0
    )
    rising, last = False, np.int64(0)
    if vector:
        # The default geometry and format: one vector pass (core/compression/ef_default.py).
        rising, last = ef_default.combine(d, highs, codes[first >> 2 : (first + k) >> 2], o)
    if not rising:
        # The loops; for a chunk the vector pass refused, they find the entry that falls.
        if in_bytes:
            _lows(d, 0, k, low, o, 0)
            for i in range(k):
                o[i] |= np.int64(highs[i]) << low
        # Rising (so none repeats), on the indices alone: one vectorised pass.
        step = np.int32(1)
        for i in range(1, k):
            step = min(step, np.int32(o[i]) - np.int32(o[i - 1]))
        if step <= 0:
            for i in range(1, k):
                if o[i] <= o[i - 1]:
                    return NOT_RISING, i
        last = np.int64(o[k - 1])
        if width:
            mask = (1 << width) - 1
            for i in range(k):
                o[i] |= _code(codes, first + i, width, mask) << INDEX_BITS
    if last >= size:  # the largest, since they rise
        return OUT_OF_RANGE, k - 1
    return OK, 0


@njit(nogil=True, cache=True, inline="always")
def _decode(data, geo, out, codes, width):
    """Every chunk into `out` (one entry each: its index, and its code above INDEX_BITS when
    `width`); (verdict, first bad entry or -1)."""
    if geo.shape[0] == 0:
        return OK, -1
    highs = np.empty(geo[:, K].max() + 64, np.uint8)
    for p in range(geo.shape[0]):
        offset, n, k, size, low, upper, per_chunk, start = geo[p]
        for c in range(n):
            at, first = start + c * per_chunk, offset + c * k
            status, bad = _decode_chunk(
                data[at : at + per_chunk],
                k,
                low,
                upper,
                size,
                out[first : first + k],
                highs,
                codes,
                width,
                first,
            )
            if status != OK:
                return status, first + bad
    return OK, -1


@njit(nogil=True, cache=True, inline="always")
def _decode_compact(data, codes, width, bins, geo, out, counts):
    """The compact entries (`index | code << INDEX_BITS`, what the gather's fold reads)
    straight from the bitstream, every check of the stream on the way, then the code
    counts per parameter the norms need. Decoded indices rise by construction, so no
    table of the indices seen is needed."""
    status, at = _decode(data, geo, out, codes, width)
    if status != OK:
        return status, at
    for p in range(geo.shape[0]):
        first = geo[p, 0]
        bad = _tally(out[first : first + geo[p, 1] * geo[p, 2]], bins, counts[p])
        if bad >= 0:
            return BAD_CODE, first + bad
    return OK, -1


@njit(nogil=True, cache=True)
def decode_compact(data, codes, width, bins, geo, out, counts):
    return _decode_compact(data, codes, width, bins, geo, out, counts)


@njit(cache=True)
def decode_compact_held(data, codes, width, bins, geo, out, counts):
    return _decode_compact(data, codes, width, bins, geo, out, counts)


@njit(nogil=True, cache=True)
def decode_indices(data, geo, out):
    return _decode(data, geo, out, _NO_CODES, 0)


@njit(cache=True)
def decode_indices_held(data, geo, out):
    return _decode(data, geo, out, _NO_CODES, 0)


@njit(nogil=True, cache=True, inline="always")
def _write_chunk(out, geo_row, c, local, first):
    """Chunk c's bytes of the stream (any contents before) for its rising indices
    local[first:first + k]: the low fields through a 64-bit accumulator, then one bit of
    the upper vector per entry."""
    k, low, per_chunk, start = geo_row[K], geo_row[LOW], geo_row[CHUNK_BYTES], geo_row[START]
    base = start + c * per_chunk
    mask = (np.int64(1) << low) - 1
    at = base
    if low:
        acc = np.int64(0)
        held = 0
        for i in range(k):
            acc |= (np.int64(local[first + i]) & mask) << held
            held += low
            while held >= 8:
                out[at] = np.uint8(acc & 0xFF)
                acc >>= 8
                held -= 8
                at += 1
        if held:
            out[at] = np.uint8(acc & 0xFF)
    upper = base + ((k * low + 7) >> 3)
    out[upper : base + per_chunk] = 0
    for i in range(k):
        bit = (np.int64(local[first + i]) >> low) + i
        out[upper + (bit >> 3)] |= np.uint8(1 << (bit & 7))


@njit(nogil=True, cache=True)
def encode(local, geo, out):
    """The stream for rising within-chunk indices `local` (one per entry) into `out` (the
    stream's bytes, any contents). (The CPU encoder writes it during selection, `select`.)"""
    for p in range(geo.shape[0]):
        offset, n, k = geo[p, OFFSET], geo[p, CHUNKS], geo[p, K]
        for c in range(n):
            _write_chunk(out, geo[p], c, local, offset + c * k)


@attrs.frozen
class Checks:
    decode_compact: Callable
    decode_indices: Callable


# As in `kernels`: worker threads let the GIL go, an event loop's thread keeps it.
RELEASING = Checks(decode_compact, decode_indices)
HOLDING = Checks(decode_compact_held, decode_indices_held)


def _example():
    """Arguments for every kernel on a two-parameter plan: what a warm-up calls to fill
    numba's cache before a network starts."""
    plan = Plan([("a", (64, 64)), ("b", (8,))], 64, 64)
    geo = geometry(plan)
    local = np.zeros(plan.total_entries, np.int64)
    for m in plan.params:
        local[m.offset : m.offset + m.n_entries] = np.tile(np.arange(m.k), m.n_chunks)
    stream = np.zeros(nbytes(plan), np.uint8)
    encode(local, geo, stream)
    codes = np.zeros((plan.total_entries * 2 + 7) // 8, np.uint8)
    compact = np.zeros(plan.total_entries, np.uint16)
    indices = np.zeros(plan.total_entries, np.uint16)
    counts = np.zeros((len(plan.params), 4), np.int64)
    return {
        "encode": (local, geo, stream.copy()),
        "compact": (stream, codes, 2, 4, geo, compact, counts),
        "indices": (stream, geo, indices),
    }


# (kernel, builder of example arguments) for every kernel the encoder and the gather call.
WARMUP = (
    (encode, lambda: _example()["encode"]),
    (decode_compact, lambda: _example()["compact"]),
    (decode_compact_held, lambda: _example()["compact"]),
    (decode_indices, lambda: _example()["indices"]),
    (decode_indices_held, lambda: _example()["indices"]),
)
