"""The fused CPU selection (core.compression.select) against the torch path (the one CUDA
takes): the same wire tensors, so the same decoded gradient and the same error feedback;
and against a stable sort of each chunk's magnitudes, ties, NaN, infinities, signed zeros
and subnormals included."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.compression import (
    TopKCompressor,
    TopKParams,
    compress_with_feedback,
    elias_fano,
    packing,
    select,
)
from core.compression.chunking import Plan
from core.compression.quantize import quantize

dims = st.integers(1, 70)
shapes = st.dictionaries(
    st.text("abcdef.", min_size=1, max_size=8),
    st.one_of(st.tuples(dims), st.tuples(dims, dims), st.tuples(dims, dims, dims), st.just(())),
    min_size=1,
    max_size=4,
)


def pair(params: TopKParams) -> tuple[TopKCompressor, TopKCompressor]:
    return TopKCompressor(params), TopKCompressor(params, fused=False)


@settings(max_examples=80, deadline=None)
@given(shapes, st.integers(1, 64), st.integers(1, 80), st.sampled_from([0, 2, 4, 256]),
       st.sampled_from(["elias_fano", "packed"]), st.sampled_from([torch.float32, torch.float64]),
       st.integers(0, 2**31 - 1))  # fmt: skip
def test_fused_and_torch_selection_send_the_same(shape_map, target, topk, bins, code, dtype, seed):
    # continuous values: no two magnitudes tie (ties are where the two may differ)
    gen = torch.Generator().manual_seed(seed)
    grads = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shape_map.items()}
    params = TopKParams(target_chunk=target, topk=topk, quantization_bins=bins, index_code=code)
    fused, torch_path = pair(params)
    a, b = fused.encode(grads), torch_path.encode(grads)
    assert a.spec == b.spec and a.shapes == b.shapes
    assert set(a.tensors) == set(b.tensors)
    for name in a.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name]), name


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_error_feedback_is_the_same(shape_map, seed):
    gen = torch.Generator().manual_seed(seed)
    grad = {k: torch.randn(s, generator=gen) for k, s in shape_map.items()}
    error = {k: torch.randn(s, generator=gen) for k, s in shape_map.items()}
    # torch.topk leaves ties in magnitude unspecified (the fused pass keeps the earlier
    # position): the two paths agree where the accumulated magnitudes are distinct.
    acc = {n: error[n] * 0.9 + grad[n] for n in shape_map}
    assume(all(torch.unique(t.abs()).numel() == t.numel() for t in acc.values()))
    fused, torch_path = pair(TopKParams())
    a = compress_with_feedback(fused, grad, error, decay=0.9)
    b = compress_with_feedback(torch_path, grad, error, decay=0.9)
    assert all(torch.equal(a.residual[n], b.residual[n]) for n in shape_map)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=64, max_size=64), st.integers(2, 16))
def test_ties_keep_the_earlier_position(values, topk):
    block = torch.tensor(values, dtype=torch.float32)
    fused = TopKCompressor(TopKParams(target_chunk=8, topk=topk, quantization_bins=0))
    kept = fused.local_indices(fused.encode({"w": block.view(8, 8)}))
    k = len(kept)
    want = torch.sort(block.abs(), descending=True, stable=True).indices[:k].sort().values
    assert kept.tolist() == want.tolist()


def test_a_tensor_that_needs_gradients_goes_the_torch_way():
    w = torch.randn(16, 16, requires_grad=True)
    fused, torch_path = pair(TopKParams(target_chunk=8, topk=4))
    a, b = fused.encode({"w": w}), torch_path.encode({"w": w})
    assert all(torch.equal(a.tensors[n], b.tensors[n]) for n in a.tensors)


# Few distinct magnitudes, so that ties are common; every kind of float32 the bits order.
SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.0, -1.0, 2.5, -2.5, 3e38, float("inf"),
           float("-inf"), float("nan"), -float("nan")]  # fmt: skip


def by_sort(plan: Plan, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each chunk's k largest magnitudes (NaN as infinity), ties to the earlier position,
    in rising position order: a stable sort of every chunk."""
    local, values = [], []
    for m in plan.params:
        grid = arrays[m.name].reshape(m.rows // m.h, m.h, m.cols // m.w, m.w)
        chunks = grid.transpose(0, 2, 1, 3).reshape(m.n_chunks, m.chunk_size)
        for chunk in chunks:
            mags = np.nan_to_num(np.abs(chunk), nan=np.inf, posinf=np.inf)
            kept = np.sort(np.argsort(-mags, kind="stable")[: m.k])
            local.append(kept)
            values.append(chunk[kept])
    return np.concatenate(local), np.concatenate(values)


@settings(max_examples=150, deadline=None)
@given(shapes, st.integers(1, 64), st.integers(1, 80), st.data())
def test_the_kept_entries_are_those_of_a_stable_sort(shape_map, target, topk, data):
    plan = Plan(list(shape_map.items()), target, topk)
    mix = data.draw(st.sampled_from(["special", "gaussian", "equal"]))
    arrays = {}
    for m in plan.params:
        n = m.rows * m.cols
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
        if mix == "special":
            arrays[m.name] = rng.choice(np.array(SPECIAL, np.float32), n)
        else:
            a = rng.standard_normal(n).astype(np.float32)
            arrays[m.name] = np.full(n, a[0], np.float32) if mix == "equal" else a
    local, values, stream = select.select(plan, arrays, coded=True)
    want_local, want_values = by_sort(plan, arrays)
    assert local.tolist() == want_local.tolist()
    assert values.view(np.int32).tolist() == want_values.view(np.int32).tolist()
    decoded = np.empty(plan.total_entries, np.int64)
    assert elias_fano.decode_indices(stream, elias_fano.geometry(plan), decoded)[0] == 0
    assert decoded.tolist() == local.tolist()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.lists(st.integers(-12, 12), min_size=1, max_size=30), min_size=1, max_size=3),
    st.sampled_from([2, 4, 16, 256]),
)
def test_compiled_quantisation_rounds_halves_as_torch(halves, bins):
    # Each parameter's values are symmetric multiples of 0.5 (mean 0) and the range is
    # chosen so that the scale is 1: many values land exactly half-way between two codes.
    parts = [np.array(h + [-x for x in h], np.float64) * 0.5 for h in halves]
    sigma = np.sqrt((parts[0] ** 2).sum()) / np.sqrt(parts[0].size - 1)
    sigmas = bins / sigma if sigma > 0 else 6.0
    values = np.concatenate(parts).astype(np.float32)
    sizes = [p.size for p in parts]
    starts = np.cumsum([0, *sizes]).astype(np.int64)
    width = packing.bit_width(bins)
    packed = np.empty(packing.packed_nbytes(values.size, width), np.uint8)
    shift = np.empty(len(parts), np.float32)
    lookup = np.empty((len(parts), bins), np.float32)
    select.quantize_packed(values, starts, bins, sigmas, width, packed, shift, lookup)
    ids = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor(sizes))
    q = quantize(torch.from_numpy(values), ids, len(parts), bins, sigmas)
    assert torch.equal(torch.from_numpy(packed), packing.pack(q.codes, width))
    assert torch.equal(torch.from_numpy(shift), q.shift)
    assert torch.equal(torch.from_numpy(lookup), q.lookup)
