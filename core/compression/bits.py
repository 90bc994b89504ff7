"""Single-instruction bit operations for the compiled kernels (numba), each with a plain
Python body that runs when the compiler is off (NUMBA_DISABLE_JIT: the bounds-checked fuzz
of the decoders) and gives the same results.

- `trailing_zeros(word)`: the position of the lowest set bit of a non-zero uint64.
- `popcount(word)`: the set bits of a uint64.
- `spread_highs(word, base, out, at)`: out[at + r] = (position of the r-th lowest set bit of
  `word`) - r + base, mod 256, for every set bit r: the high parts of the Elias-Fano entries
  one 64-bit word of an upper vector holds. Where the CPU has a byte compress (AVX-512
  VBMI2) it is one vector compress of 0..63 under the word as a mask, a subtract, an add
  and one 64-byte store: `out` must have 64 writable bytes from `at`, whatever the popcount.
  Elsewhere a loop over the set bits, which writes only those. The loop costs a dependent
  instruction chain and a mispredicted exit per word; the compress none
  (docs/gather.md has the figures).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

__all__ = [
    "HAS_BYTE_COMPRESS",
    "popcount",
    "spread_highs",
    "spread_highs_compress",
    "spread_highs_loop",
    "trailing_zeros",
]


def _byte_compress() -> bool:
    """Whether compiled code here gets a single-instruction byte compress: LLVM has the
    generic compress from version 20, and lowers it to one instruction with AVX-512 VBMI2;
    without it the lowering is lane by lane, slower than the loop."""
    if config.CPU_NAME not in (None, "host") or llvm.llvm_version_info < (20,):
        return False
    return bool(llvm.get_host_cpu_features().get("avx512vbmi2", False))


HAS_BYTE_COMPRESS = _byte_compress()


def trailing_zeros(word):
    w = int(word)
    return (w & -w).bit_length() - 1


def popcount(word):
    return int(word).bit_count()


def spread_highs(word, base, out, at):
    w, r = int(word), 0
    while w:
        out[at + r] = (trailing_zeros(w) - r + base) & 0xFF
        w &= w - 1
        r += 1


@intrinsic
def _cttz(typingctx, word):
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return word(word), codegen


@intrinsic
def _ctpop(typingctx, word):
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return word(word), codegen


_BYTES = ir.VectorType(ir.IntType(8), 64)
_MASK = ir.VectorType(ir.IntType(1), 64)
_IOTA = ir.Constant(_BYTES, [ir.Constant(ir.IntType(8), i) for i in range(64)])


@intrinsic
def _compress_highs(typingctx, word, base, out, at):
    def codegen(context, builder, signature, args):
        w, b, arr, pos = args
        data = context.make_array(signature.args[2])(context, builder, arr).data
        compress = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(_BYTES, [_BYTES, _MASK, _BYTES]),
            "llvm.experimental.vector.compress.v64i8",
        )
        positions = builder.call(
            compress, [_IOTA, builder.bitcast(w, _MASK), ir.Constant(_BYTES, ir.Undefined)]
        )
        lane = builder.insert_element(
            ir.Constant(_BYTES, ir.Undefined),
            builder.trunc(b, ir.IntType(8)),
            ir.Constant(ir.IntType(32), 0),
        )
        splat = builder.shuffle_vector(
            lane,
            ir.Constant(_BYTES, ir.Undefined),
            ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64),
        )
        highs = builder.add(builder.sub(positions, _IOTA), splat)
        target = builder.bitcast(builder.gep(data, [pos]), _BYTES.as_pointer())
        builder.store(highs, target).align = 1
        return context.get_dummy_value()

    return types.void(word, base, out, at), codegen


@overload(trailing_zeros, inline="always")
def _trailing_zeros_compiled(word):
    return lambda word: _cttz(word)


@overload(popcount, inline="always")
def _popcount_compiled(word):
    return lambda word: np.int64(_ctpop(word))


@njit(nogil=True, cache=True, inline="always")
def spread_highs_loop(word, base, out, at):
    """`spread_highs` a set bit at a time (what CPUs without the compress run)."""
    r = 0
    while word:
        out[at + r] = np.uint8((np.int64(_cttz(word)) - r + base) & 0xFF)
        word &= word - np.uint64(1)
        r += 1


@njit(nogil=True, cache=True, inline="always")
def spread_highs_compress(word, base, out, at):
    """`spread_highs` as one byte compress (only where `HAS_BYTE_COMPRESS`)."""
    _compress_highs(word, np.int64(base), out, np.int64(at))


@overload(spread_highs, inline="always")
def _spread_highs_compiled(word, base, out, at):
    chosen = spread_highs_compress if HAS_BYTE_COMPRESS else spread_highs_loop
    return lambda word, base, out, at: chosen(word, base, out, at)
