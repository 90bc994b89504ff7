"""The two index codes against each other, and the Elias-Fano decoder against hostile bytes.

- For any selection of rising indices, the Elias-Fano stream decodes to exactly that
  selection, and a payload carrying it decodes to exactly the dense tensors the previous
  (12-bit packed) version's payload gives, and sums the same.
- For any bytes of a stream's size, the decoder returns a verdict; what it accepts is a
  rising selection inside every chunk, and the only stream of that selection (no two byte
  strings pass for one selection). The same fuzz runs the decoder uncompiled in a child
  process, where numpy's own bounds checks would raise on any read past the buffer.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from core.compression import TopKCompressor, TopKParams, ef_default, elias_fano
from core.compression.base import Compressed
from core.compression.chunking import Plan
from core.compression.compiled_sum import CompiledSum
from core.compression.summing import ChunkSum

dims = st.integers(1, 80)
shapes = st.dictionaries(
    st.text("abcdef.", min_size=1, max_size=8),
    st.one_of(st.tuples(dims), st.tuples(dims, dims), st.just(())),
    min_size=1,
    max_size=3,
)
VERDICTS = {
    elias_fano.OK,
    elias_fano.OUT_OF_RANGE,
    elias_fano.NOT_RISING,
    elias_fano.COUNT,
    elias_fano.TRAILING,
}


def selection(plan: Plan, seed: int) -> np.ndarray:
    """Any rising k of each chunk's positions, from the seed."""
    rng = np.random.default_rng(seed)
    parts = [
        np.sort(rng.choice(m.chunk_size, m.k, replace=False))
        for m in plan.params
        for _ in range(m.n_chunks)
    ]
    return np.concatenate(parts).astype(np.int64)


def stream(plan: Plan, local: np.ndarray) -> np.ndarray:
    out = np.empty(elias_fano.nbytes(plan), np.uint8)
    elias_fano.encode(local, elias_fano.geometry(plan), out)
    return out


@settings(max_examples=80, deadline=None)
@given(shapes, st.integers(1, 64), st.integers(1, 80), st.sampled_from([0, 2, 4, 16]),
       st.booleans(), st.integers(0, 2**31 - 1))  # fmt: skip
def test_any_selection_decodes_the_same_in_both_codes(shape_map, target, topk, bins, dct, seed):
    new = TopKCompressor(
        TopKParams(target_chunk=target, topk=topk, quantization_bins=bins, use_dct=dct)
    )
    old = TopKCompressor(attrs_evolve(new.params, index_code="packed"))
    gen = torch.Generator().manual_seed(seed)
    c_old = old.encode({k: torch.randn(s, generator=gen) for k, s in shape_map.items()})
    plan = old._plans.get(c_old.shapes)
    local = selection(plan, seed)
    packed = old._pack_indices(plan, torch.from_numpy(local))
    coded = new._pack_indices(plan, torch.from_numpy(local))
    assert np.array_equal(new.local_indices(_with(new, c_old, coded)).numpy(), local)
    a = _with(old, c_old, packed)
    b = _with(new, c_old, coded)
    new.validate(b)
    da, db = old.decode(a), new.decode(b)
    assert all(torch.equal(da[n], db[n]) for n in shape_map)
    # and the gather's sum, compiled or not: the same for a peer in either code, and the
    # decoded gradient (to the last bit without DCT; with it, the sum's batched inverse
    # transform may round differently from the decoder's by an ulp)
    ones = lambda norms: dict.fromkeys(norms, 1.0)  # noqa: E731
    for make in (lambda: CompiledSum(new, plan), lambda: ChunkSum(new, plan, "cpu")):
        sums = []
        for c in (a, b):
            total = make()
            total.fold(c, ones)
            sums.append(total.result(1.0))
        assert all(torch.equal(sums[0][n], sums[1][n]) for n in shape_map)
        for n in shape_map:
            if dct:
                torch.testing.assert_close(sums[0][n], da[n].float(), rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(sums[0][n], da[n].float())


def attrs_evolve(params, **changes):
    import attrs

    return attrs.evolve(params, **changes)


def _with(comp: TopKCompressor, c: Compressed, idx: torch.Tensor) -> Compressed:
    return Compressed(spec=comp.spec, shapes=c.shapes, tensors=dict(c.tensors) | {"idx": idx})


def fuzz_one(plan: Plan, raw: np.ndarray) -> int:
    """Decode `raw` as `plan`'s stream; check what an accepted stream must be."""
    geo = elias_fano.geometry(plan)
    out = np.zeros(plan.total_entries, np.uint16)
    status, entry = elias_fano.decode_indices(raw, geo, out)
    assert status in VERDICTS
    if status != elias_fano.OK:
        assert 0 <= entry < plan.total_entries
        return status
    for m in plan.params:
        rows = out[m.offset : m.offset + m.n_entries].reshape(m.n_chunks, m.k).astype(np.int64)
        assert (rows < m.chunk_size).all()
        assert (np.diff(rows, axis=1) > 0).all()
    assert np.array_equal(stream(plan, out.astype(np.int64)), raw)
    return status


plans = st.builds(
    lambda shape, target, topk: Plan([("w", shape)], target, topk),
    st.one_of(st.tuples(st.integers(1, 64)), st.tuples(st.integers(1, 64), st.integers(1, 64))),
    st.integers(1, 64),
    # k of 171 and more (chunks of 4096) take the decoder's path for high parts past a byte
    st.one_of(st.integers(1, 64), st.integers(150, 600)),
)


def damaged(data, plan: Plan) -> np.ndarray:
    """Random bytes, or a valid stream with a few bytes or bits changed."""
    size = elias_fano.nbytes(plan)
    if data.draw(st.booleans()):
        return np.frombuffer(data.draw(st.binary(min_size=size, max_size=size)), np.uint8).copy()
    raw = stream(plan, selection(plan, data.draw(st.integers(0, 2**31 - 1))))
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, size - 1))
        raw[at] ^= np.uint8(1 << data.draw(st.integers(0, 7)))
    return raw


@settings(max_examples=400, deadline=None)
@given(plans, st.data())
def test_hostile_streams_get_a_verdict(plan, data):
    fuzz_one(plan, damaged(data, plan))


def fuzz_uncompiled() -> None:
    """Run in a child with NUMBA_DISABLE_JIT=1: the decoder as plain Python on numpy arrays
    that raise IndexError on any read past their end."""
    assert os.environ.get("NUMBA_DISABLE_JIT") == "1"

    @settings(max_examples=150, deadline=None, database=None)
    @given(plans, st.data())
    def run(plan, data):
        fuzz_one(plan, damaged(data, plan))

    run()


def test_the_uncompiled_decoder_never_reads_past_the_stream():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    code = "from tests.property.test_index_codes import fuzz_uncompiled; fuzz_uncompiled()"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


# The default geometry (64 of 4096 a chunk, 2-bit codes): the compact decode takes the vector
# pass of core/compression/ef_default.py; the index-only decode takes the loops.
DEFAULT_PLANS = st.builds(
    lambda rows, cols, tail: Plan([("a", (64 * rows, 64 * cols)), ("b", (tail,))], 64, 64),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 300),
)


@settings(max_examples=200, deadline=None)
@given(DEFAULT_PLANS, st.data())
def test_the_vector_pass_gives_the_loops_verdicts_and_entries(plan, data):
    raw = damaged(data, plan)
    codes = np.frombuffer(
        data.draw(st.binary(min_size=plan.total_entries // 4 + 1, max_size=plan.total_entries)),
        np.uint8,
    ).copy()
    geo = elias_fano.geometry(plan)
    indices = np.zeros(plan.total_entries, np.uint16)
    status, entry = elias_fano.decode_indices(raw, geo, indices)
    compact = np.zeros(plan.total_entries, np.uint16)
    counts = np.zeros((2, 4), np.int64)
    got, got_entry = elias_fano.decode_compact(raw, codes, 2, 4, geo, compact, counts)
    assert (got, got_entry) == (status, entry)
    if status == elias_fano.OK:
        e = np.arange(plan.total_entries)
        code = (codes[e >> 2] >> (2 * (e & 3))) & 3
        assert np.array_equal(compact, indices | (code.astype(np.uint16) << 12))
        assert counts.sum() == plan.total_entries


@njit
def _combine(d, highs, codes, out):
    return ef_default.combine(d, highs, codes, out)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=64, max_size=64), st.binary(min_size=64, max_size=64), st.data())
def test_the_vector_pass_equals_its_python_body(d, highs, data):
    codes = np.frombuffer(data.draw(st.binary(min_size=16, max_size=16)), np.uint8)
    d_, h_ = np.frombuffer(d, np.uint8), np.frombuffer(highs, np.uint8)
    if data.draw(st.booleans()):  # rising high parts, as a valid chunk has
        h_ = np.sort(h_ % 65).astype(np.uint8)
    out, expected = np.zeros(64, np.uint16), np.zeros(64, np.uint16)
    assert _combine(d_, h_, codes, out) == ef_default.combine(d_, h_, codes, expected)
    assert np.array_equal(out, expected)
