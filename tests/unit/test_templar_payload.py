"""Templar gradient payloads: the golden fixture, round trips, and every semantic check."""

import io
import math
from pathlib import Path

import attrs
import pytest
import torch

from core.codec import Expected
from core.compression import TopKCompressor, TopKParams
from core.invalid import InvalidPayload
from core.templar import payload, writer
from core.templar.layout import layout_for
from tests.unit.templar_archives import (
    COMPRESSOR,
    EXPECTED,
    FIXTURE,
    SHAPES,
    golden_bytes,
    golden_dense,
    golden_state_dict,
    save,
)

ROOT = Path(__file__).resolve().parents[2]


def reason(data: bytes, expected: Expected = EXPECTED) -> str:
    with pytest.raises(InvalidPayload) as err:
        payload.decode(data, expected)
    return err.value.reason


def with_state(**changes) -> bytes:
    sd = golden_state_dict()
    for key, value in changes.items():
        if value is None:
            del sd[key]
        else:
            sd[key] = value
    return save({"state_dict": sd, "global_step": 17})


def test_committed_fixture_decodes_to_the_hand_computed_gradient():
    data = (ROOT / FIXTURE).read_bytes()
    got, meta = payload.decode_with_metadata(data, EXPECTED)
    dense = COMPRESSOR.decode(got.compressed)
    for name, want in golden_dense().items():
        assert torch.equal(dense[name], want), name
    assert meta == {"window": 42, "sample_digest": "0123abcd", "sample_count": 8}
    assert got.meta.window == 42 and got.meta.global_step == 17
    assert got.nbytes == len(data) and not got.signed


def test_fixture_is_what_torch_save_of_the_documented_layout_gives():
    fresh = payload.decode(golden_bytes(), EXPECTED)
    committed = payload.decode((ROOT / FIXTURE).read_bytes(), EXPECTED)
    for key in ("idx", "val", "shift", "lookup"):
        assert torch.equal(fresh.compressed.tensors[key], committed.compressed.tensors[key])


def test_decoded_form_is_the_packed_index_code_of_the_native_compressor():
    got = payload.decode(golden_bytes(), EXPECTED).compressed
    assert "index_code" not in got.spec  # "packed": Templar's 12-bit indices, byte for byte
    # bias first (name order), then weight: the concatenated idxs entries
    assert bytes(got.tensors["idx"].numpy()) == b"\x03\x10\x00\x02\x00\x00\x05\xa0\x00\x00\xf0\x00"
    assert got.tensors["shift"].tolist() == [-0.5, 0.25]


def test_writer_gives_templar_keys_dtypes_and_layout():
    got = payload.decode(golden_bytes(), EXPECTED)
    data = writer.encode(
        got.compressed,
        COMPRESSOR,
        window=42,
        global_step=17,
        extra={"sample_digest": "0123abcd", "sample_count": 8},
    )
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    assert set(loaded) == {"state_dict", "global_step"} and loaded["global_step"] == 17
    sd, want = loaded["state_dict"], golden_state_dict()
    assert set(sd) == set(want)
    assert sd["metadata"] == want["metadata"]
    for name in SHAPES:
        for suffix in ("idxs", "vals"):
            assert sd[name + suffix].dtype == torch.uint8
            assert torch.equal(sd[name + suffix], want[name + suffix]), name + suffix
        shift, scale, offset, lookup, dtype = sd[name + "quant_params"]
        w_shift, _, w_offset, w_lookup, w_dtype = want[name + "quant_params"]
        assert shift.dim() == 0 and torch.equal(shift, w_shift)
        assert isinstance(scale, float) and 1e-12 <= scale <= 1e4
        assert offset == w_offset and torch.equal(lookup, w_lookup) and dtype is w_dtype


@pytest.mark.parametrize("use_dct", [False, True])
@pytest.mark.parametrize("index_code", ["elias_fano", "packed"])
def test_round_trip_write_then_read(use_dct, index_code):
    shapes = {"a.weight": (128, 96), "a.bias": (128,), "b.weight": (80, 128), "b.bias": (80,)}
    codec = TopKCompressor(TopKParams(topk=32, use_dct=use_dct, index_code=index_code))
    gen = torch.Generator().manual_seed(3)
    comp = codec.encode({n: torch.randn(s, generator=gen) for n, s in shapes.items()})
    data = writer.encode(comp, codec, window=9, global_step=4)
    got = payload.decode(data, Expected(version="v", codec=codec, shapes=shapes, window=9))
    want, back = codec.decode(comp), codec.decode(got.compressed)
    for name in shapes:
        assert torch.equal(want[name], back[name]), name


async def test_decoded_payload_folds_into_the_running_sum():
    from core.aggregate import Aggregator, Normalisation

    agg = Aggregator(COMPRESSOR, SHAPES, normalisation=Normalisation.NONE)
    for _ in range(2):
        await agg.add(agg.prepare(payload.decode(golden_bytes(), EXPECTED).checked))
    result = agg.result()
    for name, want in golden_dense().items():
        assert torch.allclose(result[name], want), name


def test_layout_refuses_shapes_templar_cannot_carry():
    with pytest.raises(ValueError, match="no layout"):
        layout_for(COMPRESSOR, {"x": (2, 2, 2)})
    with pytest.raises(ValueError, match="quantised"):
        layout_for(TopKCompressor(TopKParams(quantization_bins=0)), SHAPES)
    with pytest.raises(ValueError, match="odd"):
        layout_for(COMPRESSOR, {"x": (1,)})


def test_a_wrong_top_level_is_bad_structure():
    assert reason(save({"state_dict": golden_state_dict(), "x": 1})) == "bad_structure"
    assert reason(save([1, 2])) == "bad_structure"
    assert reason(save({"state_dict": [1]})) == "bad_structure"
    assert reason(save({"state_dict": golden_state_dict(), "global_step": -1})) == "bad_metadata"


def test_global_step_defaults_to_zero_as_in_templar():
    got = payload.decode(save({"state_dict": golden_state_dict()}), EXPECTED)
    assert got.meta.global_step == 0


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ({"window": 41}, "window_mismatch"),
        ({"window": "42"}, "bad_metadata"),
        ({"window": 42, "dummy": True}, "missing_param"),
        ({"window": 42, "sample_digest": "XYZ"}, "bad_metadata"),
        ({"window": 42, "sample_count": -2}, "bad_metadata"),
        ({"window": 42, "note": "x" * 300}, "bad_metadata"),
        ({"window": 42, "nested": [1]}, "bad_metadata"),
        ({f"k{i}": 1 for i in range(20)}, "bad_metadata"),
        (None, "bad_metadata"),
    ],
)
def test_metadata_checks(metadata, why):
    sd = golden_state_dict()
    if metadata is None:
        del sd["metadata"]
    else:
        sd["metadata"] = metadata
    assert reason(save({"state_dict": sd})) == why


def test_dummy_gradient_of_a_starting_miner_is_skipped():
    dummy = save({"state_dict": {"metadata": {"window": 42, "dummy": True}}, "global_step": 0})
    assert reason(dummy) == "missing_param"


def test_missing_and_unknown_parameters():
    assert reason(with_state(**{"layer.biasvals": None})) == "missing_param"
    assert reason(with_state(**{"other.weightidxs": torch.zeros(6, dtype=torch.uint8)})) == (
        "unknown_param"
    )
    assert reason(with_state(**{"layer.biasnorm": torch.zeros(1)})) == "unknown_tensor"


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("layer.weightidxs", torch.zeros(6, dtype=torch.int16), "bad_dtype"),
        ("layer.weightidxs", torch.zeros(9, dtype=torch.uint8), "bad_shape"),
        ("layer.weightvals", torch.zeros(1, 2, 2, dtype=torch.float32), "bad_dtype"),
        ("layer.weightvals", torch.zeros(2, 2, dtype=torch.uint8), "bad_shape"),
        ("layer.weightvals", torch.tensor([[[0, 4], [1, 2]]], dtype=torch.uint8), "bad_value_code"),
        ("layer.weightvals", [1, 2], "bad_structure"),
    ],
)
def test_tensor_checks(key, value, why):
    assert reason(with_state(**{key: value})) == why


def _qp(**changes):
    base = dict(
        shift=torch.tensor(0.25),
        scale=0.9,
        offset=2,
        lookup=torch.tensor([-1.5, -0.5, 0.5, 1.5]),
        dtype=torch.float32,
    )
    base.update(changes)
    return tuple(base.values())


@pytest.mark.parametrize(
    ("qp", "why"),
    [
        (_qp(scale=0.0), "bad_quant_params"),
        (_qp(scale=1e5), "bad_quant_params"),
        (_qp(scale=math.nan), "bad_quant_params"),
        (_qp(scale=1), "bad_quant_params"),
        (_qp(offset=1), "bad_quant_params"),
        (_qp(dtype=torch.int64), "bad_quant_params"),
        (_qp(shift=torch.tensor([0.25])), "bad_quant_params"),
        (_qp(shift=torch.tensor(0.25, dtype=torch.float64)), "bad_quant_params"),
        (_qp(lookup=torch.zeros(5)), "bad_shape"),
        (_qp(lookup=torch.zeros(4, dtype=torch.float64)), "bad_dtype"),
        (_qp(lookup=torch.tensor([0.0, math.inf, 0.0, 0.0])), "non_finite"),
        (_qp(shift=torch.tensor(math.nan)), "non_finite"),
        (_qp(lookup=torch.tensor([0.0, 2e10, 0.0, 0.0])), "value_out_of_range"),
        (_qp()[:4], "bad_quant_params"),
        ([1, 2, 3, 4, 5], "bad_quant_params"),
    ],
)
def test_quant_param_checks(qp, why):
    assert reason(with_state(**{"layer.weightquant_params": qp})) == why


def test_bf16_shift_is_read_as_templar_writes_it_for_a_bf16_model():
    qp = _qp(shift=torch.tensor(0.25, dtype=torch.bfloat16), dtype=torch.bfloat16)
    got = payload.decode(with_state(**{"layer.weightquant_params": qp}), EXPECTED)
    dense = COMPRESSOR.decode(got.compressed)["layer.weight"]
    assert torch.equal(dense, golden_dense()["layer.weight"])


def test_index_checks_come_from_the_native_codec():
    beyond = torch.tensor(list(b"\x10\x00\x00\x00\xf0\x00"), dtype=torch.uint8)  # 16 in a 16-chunk
    assert reason(with_state(**{"layer.weightidxs": beyond})) == "index_out_of_range"
    twice = torch.tensor(list(b"\x05\x50\x00\x00\xf0\x00"), dtype=torch.uint8)  # 5 and 5
    assert reason(with_state(**{"layer.weightidxs": twice})) == "duplicate_index"


def test_size_limit_is_checked_before_reading():
    small = attrs.evolve(EXPECTED, max_bytes=100)
    assert reason(golden_bytes(), small) == "too_large"
    assert reason(b"x" * (payload.size_limit(EXPECTED) + 1)) == "too_large"
    assert payload.size_limit(small) == 100


def test_not_bytes():
    assert reason("text") == "not_bytes"


def test_expected_without_topk_compressor_is_a_configuration_error():
    from core.compression import DenseCompressor

    with pytest.raises(ValueError):
        payload.decode(golden_bytes(), Expected(version="v", codec=DenseCompressor(), shapes={}))
