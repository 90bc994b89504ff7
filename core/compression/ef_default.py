"""The default chunk's Elias-Fano entries as one vector pass (numba intrinsic, LLVM IR).

At the defaults a chunk keeps 64 of 4,096 positions: 48 bytes of 6-bit low fields, then the
upper vector, and the payload packs a 2-bit value code per entry. `combine(d, highs, codes,
out)` writes the 64 compact entries (`low | high << 6 | code << INDEX_BITS`) from the chunk's
bytes `d`, its 64 high parts `highs` (from `bits.spread_highs`) and its 16 code bytes, and
returns (whether the indices strictly rise, the last index). The loops it replaces (the low
fields, the combine, the codes, the rising check) each cost a pass over the chunk's entries;
here they are one pass of 64-lane vector operations that LLVM lowers to the host's vector
instructions (docs/gather.md has the figures). Only for that geometry: the caller checks
k = 64, L = 6, 2-bit codes, and a chunk whose first entry starts a code byte, and passes
arrays at least that long; the plain Python body (NUMBA_DISABLE_JIT) gives the same results
with numpy's bounds checks.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic, overload

from core.compression.chunking import INDEX_BITS

__all__ = ["CODE_BITS", "LOW", "K", "combine"]

K, LOW, CODE_BITS = 64, 6, 2


def combine(d, highs, codes, out):
    index = np.zeros(K, np.int64)
    for e in range(K):
        g, j = divmod(e, 4)
        x = int(d[3 * g]) | int(d[3 * g + 1]) << 8 | int(d[3 * g + 2]) << 16
        index[e] = ((x >> (LOW * j)) & 63) | int(highs[e]) << LOW
        code = (int(codes[g]) >> (CODE_BITS * j)) & 3
        out[e] = index[e] | code << INDEX_BITS
    return bool((np.diff(index) > 0).all()), int(index[-1])


_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


def _vec(t, n):
    return ir.VectorType(t, n)


def _const(t, values):
    return ir.Constant(_vec(t, len(values)), [ir.Constant(t, v) for v in values])


def _load(builder, ptr, n):
    """n bytes from `ptr` as one unaligned vector load."""
    target = builder.bitcast(ptr, _vec(_I8, n).as_pointer())
    loaded = builder.load(target)
    loaded.align = 1
    return loaded


def _bytes_at(builder, vector, lanes):
    """<64 x i32> whose lane e is byte lanes[e] of `vector`, zero-extended."""
    undef = ir.Constant(vector.type, ir.Undefined)
    picked = builder.shuffle_vector(vector, undef, _const(_I32, lanes))
    return builder.zext(picked, _vec(_I32, K))


@intrinsic
def _combine(typingctx, d, highs, codes, out):
    def codegen(context, builder, signature, args):
        data = [
            context.make_array(t)(context, builder, a).data
            for t, a in zip(signature.args, args, strict=True)
        ]
        lows_b = _load(builder, data[0], 48)
        highs_b = _load(builder, data[1], K)
        codes_b = _load(builder, data[2], K // 4)
        group = [e // 4 for e in range(K)]
        x = _bytes_at(builder, lows_b, [3 * g for g in group])
        x = builder.or_(
            x, builder.shl(_bytes_at(builder, lows_b, [3 * g + 1 for g in group]), _splat(8))
        )
        x = builder.or_(
            x, builder.shl(_bytes_at(builder, lows_b, [3 * g + 2 for g in group]), _splat(16))
        )
        low = builder.and_(
            builder.lshr(x, _const(_I32, [LOW * (e % 4) for e in range(K)])), _splat(63)
        )
        high = builder.shl(builder.zext(highs_b, _vec(_I32, K)), _splat(LOW))
        index = builder.or_(low, high)
        code = builder.and_(
            builder.lshr(
                _bytes_at(builder, codes_b, group),
                _const(_I32, [CODE_BITS * (e % 4) for e in range(K)]),
            ),
            _splat(3),
        )
        entries = builder.or_(index, builder.shl(code, _splat(INDEX_BITS)))
        target = builder.bitcast(data[3], _vec(_I16, K).as_pointer())
        builder.store(builder.trunc(entries, _vec(_I16, K)), target).align = 1
        # Lane e against lane e - 1; lane 0 against -1 (the second operand's first lane).
        before = builder.shuffle_vector(
            index, _const(_I32, [-1] * K), _const(_I32, [K, *range(K - 1)])
        )
        rising = builder.icmp_signed(">", index, before)
        every = builder.icmp_unsigned(
            "==", builder.bitcast(rising, ir.IntType(K)), ir.Constant(ir.IntType(K), -1)
        )
        last = builder.extract_element(index, ir.Constant(_I32, K - 1))
        i64 = ir.IntType(64)
        return context.make_tuple(
            builder, signature.return_type, [builder.zext(every, i64), builder.zext(last, i64)]
        )

    return types.UniTuple(types.int64, 2)(d, highs, codes, out), codegen


def _splat(value):
    return _const(_I32, [value] * K)


@overload(combine, inline="always")
def _combine_compiled(d, highs, codes, out):
    def run(d, highs, codes, out):
        rising, last = _combine(d, highs, codes, out)
        return rising != 0, last

    return run
