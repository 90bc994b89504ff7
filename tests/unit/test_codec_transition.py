"""Moving a network from the packed index code to Elias-Fano: during the configured
transition a receiver reads both, after it the previous one is `retired_codec`."""

from __future__ import annotations

import pytest
import torch

from core import codec
from core.codec import Expected, InvalidPayload, PayloadMeta
from core.compression import TopKCompressor, TopKParams
from tests.support.aggregating import mean_of
from tests.unit.compression_models import SHAPES, grads

PACKED = TopKParams(index_code="packed")


def meta(window: int) -> PayloadMeta:
    return PayloadMeta(window=window, uid=3, hotkey="hk", global_step=1, version="1")


def payload(params: TopKParams, window: int, seed: int = 0) -> bytes:
    return codec.encode(TopKCompressor(params).encode(grads(seed)), meta(window))


def expected(until: int, params: TopKParams | None = None) -> Expected:
    comp = TopKCompressor(params or TopKParams(), transition_until=until)
    return Expected(version="1", codec=comp, shapes=SHAPES)


def reason(data: bytes, exp: Expected) -> str:
    with pytest.raises(InvalidPayload) as err:
        codec.decode(data, exp)
    return err.value.reason


def test_the_previous_code_is_read_below_the_transition_window_only() -> None:
    exp = expected(until=100)
    old = codec.decode(payload(PACKED, 99), exp)
    new = codec.decode(payload(TopKParams(), 99), exp)
    assert old.compressed.spec.get("index_code") is None
    assert new.compressed.spec["index_code"] == "elias_fano"
    a, b = old.dense(exp.codec), new.dense(exp.codec)
    assert all(torch.equal(a[n], b[n]) for n in SHAPES)
    assert reason(payload(PACKED, 100), exp) == "retired_codec"
    assert codec.decode(payload(TopKParams(), 100), exp).meta.window == 100


def test_without_a_transition_the_previous_code_is_another_codec() -> None:
    assert reason(payload(PACKED, 1), expected(until=0)) == "codec_mismatch"
    # and the other way round: a node still writing the packed code, reading the new one
    exp = expected(until=10, params=PACKED)
    assert codec.decode(payload(TopKParams(), 9), exp).meta.window == 9
    assert reason(payload(TopKParams(), 10), exp) == "retired_codec"


def test_the_size_limit_admits_the_larger_format_during_a_transition() -> None:
    plain = Expected(version="1", codec=TopKCompressor(), shapes=SHAPES).size_limit()
    grown = TopKCompressor(PACKED).estimate_bytes(SHAPES) - TopKCompressor().estimate_bytes(SHAPES)
    assert grown > 0
    assert expected(until=5).size_limit() == plain + grown


def test_a_gather_folds_both_codes_into_the_same_sum() -> None:
    exp = expected(until=100)
    mixed = [payload(PACKED if i % 2 else TopKParams(), 7, seed=i) for i in range(4)]
    same = [payload(TopKParams(), 7, seed=i) for i in range(4)]

    def total(datas):
        payloads = [codec.decode(data, exp).compressed for data in datas]
        return mean_of(exp.codec, SHAPES, payloads, peers=len(datas))

    a, b = total(mixed), total(same)
    assert all(torch.equal(a[n], b[n]) for n in SHAPES)
