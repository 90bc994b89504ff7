import math

import pytest
import torch

from core.compression import (
    Compressor,
    DenseCompressor,
    TopKCompressor,
    TopKParams,
    compress_with_feedback,
    default_compressor,
    make_sum,
    topk_only_compressor,
)
from core.compression import dct as dct_mod
from core.compression.base import Shapes
from core.compression.chunking import PlanCache, as_matrix, chunk_k, largest_divisor_at_most
from core.compression.quantize import scale_of
from core.invalid import InvalidPayload
from tests.unit.compression_models import SHAPES, grads

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference_topk(x: torch.Tensor, target_chunk: int, topk: int) -> torch.Tensor:
    """Dense top-k per chunk, written the slow and obvious way (one chunk at a time)."""
    rows, cols = as_matrix(tuple(x.shape))
    m = x.reshape(rows, cols)
    h = largest_divisor_at_most(rows, target_chunk)
    w = largest_divisor_at_most(cols, target_chunk)
    k = chunk_k(topk, h * w)
    out = torch.zeros_like(m)
    for y in range(0, rows, h):
        for z in range(0, cols, w):
            block = m[y : y + h, z : z + w].reshape(-1)
            # ties keep the earlier position (core/compression/select.py)
            keep = torch.sort(block.abs(), descending=True, stable=True).indices[:k]
            kept = torch.zeros_like(block)
            kept[keep] = block[keep]
            out[y : y + h, z : z + w] = kept.view(h, w)
    return out.reshape(x.shape)


def test_chunk_sides_follow_templars_divisor_rule():
    assert largest_divisor_at_most(512, 64) == 64
    assert largest_divisor_at_most(2048, 64) == 64
    assert largest_divisor_at_most(30, 64) == 30
    assert largest_divisor_at_most(100, 64) == 50
    assert largest_divisor_at_most(67, 64) == 1
    assert largest_divisor_at_most(1, 64) == 1


def test_k_is_even_at_least_two_and_never_beyond_the_chunk():
    assert chunk_k(64, 4096) == 64
    assert chunk_k(63, 4096) == 62
    assert chunk_k(1, 4096) == 2
    assert chunk_k(64, 7) == 6
    assert chunk_k(64, 1) == 1


def test_compressors_satisfy_the_protocol():
    for c in (default_compressor(), topk_only_compressor(), DenseCompressor()):
        assert isinstance(c, Compressor)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target_chunk,topk", [(64, 64), (8, 6), (16, 32)])
def test_topk_only_round_trip_is_exactly_dense_topk(device, target_chunk, topk):
    g = {n: t.to(device) for n, t in grads(1).items()}
    c = topk_only_compressor(target_chunk=target_chunk, topk=topk)
    compressed = c.encode(g)
    c.validate(compressed)
    out = c.decode(compressed, device="cpu")
    for name, x in g.items():
        assert out[name].shape == x.shape
        assert torch.equal(out[name], reference_topk(x.cpu(), target_chunk, topk)), name


def test_quantised_round_trip_keeps_the_topk_positions_within_the_error_bound():
    g = grads(2)
    params = TopKParams(target_chunk=8, topk=6, quantization_bins=16, quantization_range=6)
    c = TopKCompressor(params)
    out = c.decode(c.encode(g))
    for name, x in g.items():
        ref = reference_topk(x, 8, 6)
        kept = ref != 0
        assert torch.equal(out[name] != 0, kept) or (out[name][~kept] == 0).all(), name
        values = x[kept]
        scale = scale_of(values, 16, 6.0)
        err = (out[name][kept] - values).abs()
        # interior bins: |error| <= scale; end bins: <= the spread of the bin's members
        code = ((values - values.mean()) / scale + 8).round().clamp(0, 15)
        for b in code.unique():
            members = values[code == b]
            bound = scale if 0 < b < 15 else float(members.max() - members.min())
            assert (err[code == b] <= bound + 1e-5).all(), (name, int(b))


def test_default_quantisation_direction_is_close_to_dense_topk():
    g = grads(3, shapes={"w": (256, 256), "v": (512,)})
    quantised = default_compressor().decode(default_compressor().encode(g))
    exact = topk_only_compressor().decode(topk_only_compressor().encode(g))
    fine = TopKCompressor(TopKParams(quantization_bins=256))
    fine_out = fine.decode(fine.encode(g))
    for name in g:
        ref = reference_topk(g[name], 64, 64).flatten()
        assert torch.nn.functional.cosine_similarity(exact[name].flatten(), ref, 0) >= 0.9999
        assert torch.nn.functional.cosine_similarity(fine_out[name].flatten(), ref, 0) >= 0.99
        assert torch.nn.functional.cosine_similarity(quantised[name].flatten(), ref, 0) >= 0.9


def test_dct_basis_is_orthonormal_and_matches_the_cosine_formula():
    for n in (1, 7, 64):
        d = dct_mod.basis(n, torch.device("cpu")).double()
        assert torch.allclose(d.T @ d, torch.eye(n, dtype=torch.float64), atol=1e-5)
    x = torch.randn(8, dtype=torch.float64)
    coeffs = torch.tensor(
        [
            math.sqrt((1 if k == 0 else 2) / 8)
            * sum(float(x[i]) * math.cos(math.pi * (2 * i + 1) * k / 16) for i in range(8))
            for k in range(8)
        ],
        dtype=torch.float64,
    )
    got = dct_mod.forward(x.float().view(1, 8)).double().view(-1)
    assert torch.allclose(got, coeffs, atol=1e-5)


def test_dct_with_every_coefficient_kept_is_lossless():
    g = grads(4)
    c = TopKCompressor(TopKParams(target_chunk=8, topk=64, use_dct=True, quantization_bins=0))
    out = c.decode(c.encode(g))
    for name, x in g.items():
        rows, cols = as_matrix(tuple(x.shape))
        if largest_divisor_at_most(rows, 8) * largest_divisor_at_most(cols, 8) % 2:
            continue  # odd chunks keep k = size - 1 (Templar's even k)
        assert torch.allclose(out[name], x, atol=1e-4), name


def test_dct_topk_keeps_the_largest_coefficients():
    g = grads(5, shapes={"w": (16, 16)})
    c = TopKCompressor(TopKParams(target_chunk=8, topk=8, use_dct=True, quantization_bins=0))
    out = c.decode(c.encode(g))["w"]
    chunks = g["w"].view(2, 8, 2, 8).permute(0, 2, 1, 3)
    back = out.view(2, 8, 2, 8).permute(0, 2, 1, 3)
    coeffs, got = dct_mod.forward(chunks), dct_mod.forward(back)
    for a, b in zip(coeffs.reshape(4, 64), got.reshape(4, 64), strict=True):
        keep = torch.topk(a.abs(), 8).indices
        assert torch.allclose(b[keep], a[keep], atol=1e-5)
        assert (b.abs() > 1e-5).sum() == 8


def test_sizes_are_exact_and_match_the_layout():
    for c in (default_compressor(), topk_only_compressor(), DenseCompressor()):
        g = grads(6)
        compressed = c.encode(g)
        layout = c.layout(SHAPES)
        assert set(layout) == set(compressed.tensors)
        for name, spec in layout.items():
            assert compressed.tensors[name].dtype == spec.dtype
            assert tuple(compressed.tensors[name].shape) == spec.shape
        assert c.estimate_bytes(SHAPES) == compressed.nbytes()


def test_bfloat16_gradients_compress():
    g = grads(7, dtype=torch.bfloat16)
    c = topk_only_compressor(target_chunk=8, topk=6)
    out = c.decode(c.encode(g), dtype=torch.bfloat16)
    for name, x in g.items():
        assert out[name].dtype == torch.bfloat16
        assert torch.equal(out[name], reference_topk(x.float(), 8, 6).to(torch.bfloat16))


def test_dense_compressor_round_trip():
    g = grads(8)
    c = DenseCompressor()
    out = c.decode(c.encode(g))
    assert all(torch.equal(out[n], g[n]) for n in g)


def test_feedback_residual_carries_what_was_not_sent():
    c = default_compressor()
    error = None
    sent_total = {n: torch.zeros(s) for n, s in SHAPES.items()}
    grad_total = {n: torch.zeros(s) for n, s in SHAPES.items()}
    for window in range(3):
        g = grads(10 + window)
        step = compress_with_feedback(c, g, error)
        sent = c.decode(step.compressed)
        for n in g:
            sent_total[n] += sent[n]
            grad_total[n] += g[n]
            # nothing is lost: everything sent so far plus the residual is every gradient
            assert torch.allclose(sent_total[n] + step.residual[n], grad_total[n], atol=1e-4)
        error = step.residual


def test_feedback_decay_scales_the_old_error():
    c = topk_only_compressor()
    g = {"w": torch.zeros(4, 4)}
    error = {"w": torch.full((4, 4), 2.0)}
    step = compress_with_feedback(c, g, error, decay=0.5)
    assert torch.allclose(c.decode(step.compressed)["w"] + step.residual["w"], error["w"] * 0.5)


def _tamper(compressed, name, fn):
    tensors = dict(compressed.tensors)
    tensors[name] = fn(tensors[name].clone())
    return type(compressed)(spec=compressed.spec, shapes=compressed.shapes, tensors=tensors)


def test_validate_rejects_out_of_range_duplicate_and_non_finite_entries():
    g = {"w": torch.randn(6, 6)}  # one 6x6 chunk of 36: index 63 is out of range
    # The previous version's 12-bit fields, edited in place (tests/unit/test_elias_fano.py
    # damages the default stream).
    c = TopKCompressor(TopKParams(target_chunk=8, topk=4, quantization_bins=0, index_code="packed"))
    good = c.encode(g)
    c.validate(good)
    idx = c.decode(good)["w"]
    assert (idx != 0).sum() == 4

    def set_first(value):
        def fn(packed):
            packed[0] = value & 0xFF
            packed[1] = (packed[1] & 0xF0) | (value >> 8)
            return packed

        return fn

    with pytest.raises(InvalidPayload) as err:
        c.validate(_tamper(good, "idx", set_first(63)))
    assert err.value.reason == "index_out_of_range"
    second = int(good.tensors["idx"][1] >> 4) | (int(good.tensors["idx"][2]) << 4)
    with pytest.raises(InvalidPayload) as err:
        c.validate(_tamper(good, "idx", set_first(second)))
    assert err.value.reason == "duplicate_index"
    with pytest.raises(InvalidPayload) as err:
        c.validate(_tamper(good, "val", lambda v: v.fill_(float("nan"))))
    assert err.value.reason == "non_finite"


def test_validate_rejects_codes_beyond_the_bins():
    c = TopKCompressor(TopKParams(target_chunk=8, topk=8, quantization_bins=3))
    good = c.encode({"w": torch.randn(8, 8)})
    c.validate(good)
    with pytest.raises(InvalidPayload) as err:
        c.validate(_tamper(good, "val", lambda v: v.fill_(0xFF)))
    assert err.value.reason == "bad_value_code"
    with pytest.raises(InvalidPayload) as err:
        c.validate(_tamper(good, "lookup", lambda v: v.fill_(float("inf"))))
    assert err.value.reason == "non_finite"


def test_params_are_checked():
    with pytest.raises(ValueError):
        TopKParams(target_chunk=65)
    with pytest.raises(ValueError):
        TopKParams(topk=0)
    with pytest.raises(ValueError):
        TopKParams(quantization_bins=300)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_encode_decodes_the_same_on_cpu():
    g = grads(9)
    c = default_compressor()
    on_gpu = c.encode({n: t.cuda() for n, t in g.items()})
    assert all(t.is_cuda for t in on_gpu.tensors.values())
    cpu = c.decode(c.encode(g))
    gpu = c.decode(on_gpu, device="cpu")
    for n in g:
        assert torch.equal(gpu[n] != 0, cpu[n] != 0)
        assert torch.allclose(gpu[n], cpu[n], atol=1e-5)


@pytest.mark.parametrize(
    "compressor",
    [
        default_compressor(),
        TopKCompressor(TopKParams(target_chunk=8, topk=6, use_dct=True)),
        DenseCompressor(),
    ],
    ids=["topk", "dct", "dense"],
)
def test_running_sum_adds_the_decoded_gradient(compressor):
    g = grads(11)
    compressed = compressor.encode(g)
    decoded = compressor.decode(compressed)
    total = make_sum(compressor, SHAPES)
    total.fold(compressed, lambda norms: dict.fromkeys(norms, 0.5))
    total.fold(compressed, lambda norms: dict.fromkeys(norms, 0.5))
    result = total.result()
    for n in SHAPES:
        assert torch.allclose(result[n], decoded[n], atol=1e-5), n


def test_running_sum_falls_back_to_dense_decode_for_plain_compressors():
    class Plain:
        def __init__(self):
            self.inner = DenseCompressor()

        def decode(self, compressed, *, device=None, dtype=torch.float32):
            return self.inner.decode(compressed, device=device, dtype=dtype)

    g = grads(12)
    total = make_sum(Plain(), SHAPES)
    total.fold(DenseCompressor().encode(g), lambda norms: dict.fromkeys(norms, 2.0))
    result = total.result()
    assert all(torch.allclose(result[n], 2 * g[n]) for n in g)


def test_plan_cache_recognises_canonical_shapes_by_identity_and_lists_by_content() -> None:
    cache = PlanCache(target_chunk=4, topk=2, size=2)
    a = Shapes((("w", (8, 8)), ("b", (8,))))
    plan = cache.get(a)
    assert cache.get(a) is plan  # the receiver's memoised shapes: no key built
    assert cache.get([("b", [8]), ("w", [8, 8])]) is plan  # any order, any sequence type
    other = cache.get(Shapes((("w", (4, 4)),)))
    assert other is not plan and other.params[0].shape == (4, 4)
    assert cache.get(a) is plan
