"""Poisoned sums: whatever the peers send, the aggregate is finite, under every normalisation.

An attacker's values may be finite float32s whose squares, sums or decoded sums are not:
3e38 squared in float32 is inf, two of them added are inf, and a quantised value decodes to
`shift + lookup[code]`, each finite on its own.
"""

from __future__ import annotations

import math

import pytest
import torch

from core import codec
from core.aggregate import Normalisation, _clip
from core.codec import Expected, PayloadMeta
from core.compression import TopKCompressor, TopKParams, make_sum
from core.compression.bounds import MAX_ABS_VALUE
from core.fetch import FetchSettings
from core.gather import GatherSettings
from tests.reliability.support import COMP, SHAPES, Net, V, W, encode, grads, rebuild, split
from tests.support.aggregating import mean_of

FLOAT = TopKCompressor(TopKParams(target_chunk=16, topk=8, quantization_bins=0))
MODES = list(Normalisation)


def _finite(aggregate: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in aggregate.values())


def _float_payload(uid: int, value: float | None = None) -> bytes:
    compressed = FLOAT.encode(grads(uid))
    if value is not None:
        compressed.tensors["val"].fill_(value)
    meta = PayloadMeta(window=W, uid=uid, hotkey=f"hk{uid}", global_step=0, version=V)
    return codec.encode(compressed, meta)


@pytest.mark.parametrize("mode", MODES)
async def test_quantised_parts_that_sum_past_the_bound_are_refused(mode) -> None:
    """shift and lookup each finite (3e38), or each within the bound (0.6 of it): the value
    used is their sum, and that is what is checked."""
    net = Net()
    _, t = split(encode(3))
    huge = {
        "shift": torch.full_like(t["shift"], 3e38),
        "lookup": torch.full_like(t["lookup"], 3e38),
    }
    near = {
        "shift": torch.full_like(t["shift"], 0.6 * MAX_ABS_VALUE),
        "lookup": torch.full_like(t["lookup"], 0.6 * MAX_ABS_VALUE),
    }
    await net.upload(1, encode(1))
    await net.upload(2, encode(2))
    await net.upload(3, rebuild(encode(3), tensors=huge))
    await net.upload(4, rebuild(encode(4), tensors=near))
    result = await net.gather(range(1, 5), settings=_settings(mode))
    assert sorted(result.uids) == [1, 2]
    assert {u: r.split(": ")[1] for u, r in result.skipped.items()} == {
        3: "value_out_of_range",
        4: "value_out_of_range",
    }
    assert _finite(result.aggregate)


@pytest.mark.parametrize("mode", MODES)
async def test_half_the_peers_sending_float32_extremes_leave_the_aggregate_finite(mode) -> None:
    net = Net()
    net.expected = Expected(version=V, codec=FLOAT, shapes=SHAPES)
    for uid in (1, 2):
        await net.upload(uid, _float_payload(uid))
    for uid, value in ((3, 3e38), (4, -3e38), (5, 1e20)):
        await net.upload(uid, _float_payload(uid, value))
    result = await net.gather(range(1, 6), settings=_settings(mode))
    assert sorted(result.uids) == [1, 2]
    assert set(result.skipped) == {3, 4, 5}
    assert all("value_out_of_range" in r for r in result.skipped.values())
    assert _finite(result.aggregate)


@pytest.mark.parametrize("compiled", [True, False])
def test_norms_are_squared_in_float64(compiled) -> None:
    """1e20 is a finite float32 whose float32 square is inf; its norm is not."""
    compressed = FLOAT.encode(grads(1))
    compressed.tensors["val"].fill_(1e20)
    plan = FLOAT.plan(SHAPES)
    total = make_sum(FLOAT, SHAPES, compiled=compiled)
    norms = total.fold(compressed, lambda n: dict.fromkeys(n, 1.0))
    for m in plan.params:
        expected = 1e20 * math.sqrt(m.n_chunks * m.k)
        assert math.isfinite(norms[m.name])
        assert norms[m.name] == pytest.approx(expected, rel=1e-6)


def test_two_attackers_among_four_cannot_keep_full_weight_under_median_clip() -> None:
    """With half the peers at 3e38, the median norm is an attacker's: weights must still be
    finite and at most 1, and the mean finite (it was inf: inf norms gave min(1.0, nan) = 1)."""
    payloads = [FLOAT.encode(grads(uid)) for uid in (1, 2, 3, 4)]
    for hostile in payloads[2:]:
        hostile.tensors["val"].fill_(3e38)
    assert _finite(mean_of(FLOAT, SHAPES, payloads, normalisation=Normalisation.MEDIAN_CLIP))


@pytest.mark.parametrize(
    ("median", "norm", "weight"),
    [
        (1.0, 2.0, 0.5),
        (2.0, 1.0, 1.0),  # never scaled up
        (math.inf, math.inf, 0.0),
        (1.0, math.nan, 0.0),
        (math.nan, 1.0, 0.0),
        (1.0, math.inf, 0.0),
        (1.0, 0.0, 0.0),
    ],
)
def test_clip_weights_are_nan_safe(median, norm, weight) -> None:
    assert _clip(median, norm) == weight


def _settings(mode: Normalisation) -> GatherSettings:
    return GatherSettings(fetch=FetchSettings(timeout=10.0), normalisation=mode)


def test_the_compressor_under_test_is_quantised() -> None:
    assert COMP.params.quantized and not FLOAT.params.quantized
