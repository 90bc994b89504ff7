"""The fused CPU selection (core.compression.select) against the torch path (the one CUDA
takes): the same wire tensors, so the same decoded gradient and the same error feedback."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.compression import TopKCompressor, TopKParams, compress_with_feedback

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
