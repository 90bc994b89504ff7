"""Every running sum (chunk-domain and dense) agrees with decoding each peer and averaging."""

from __future__ import annotations

import statistics

import pytest
import torch

from core.aggregate import Aggregator, Normalisation
from core.compression import DenseCompressor, TopKCompressor, TopKParams
from tests.support.aggregating import mean_of

SHAPES = {"w1": (24, 40), "w2": (16, 16), "b": (40,), "emb": (3, 5, 8)}
COMPRESSORS = {
    "quantised": TopKCompressor(TopKParams(target_chunk=8, topk=6)),
    "topk-only": TopKCompressor(TopKParams(target_chunk=8, topk=6, quantization_bins=0)),
    "dct": TopKCompressor(TopKParams(target_chunk=8, topk=6, use_dct=True)),
    "dense": DenseCompressor(),
}


def reference(comp, payloads, mode: Normalisation) -> dict[str, torch.Tensor]:
    dense = [comp.decode(p) for p in payloads]
    out = {}
    for name in SHAPES:
        norms = [float(d[name].double().norm()) for d in dense]
        med = statistics.median(norms)
        weights = {
            Normalisation.NONE: [1.0] * len(norms),
            Normalisation.UNIT: [1 / n for n in norms],
            Normalisation.MEDIAN_CLIP: [min(1.0, med / n) for n in norms],
            Normalisation.KEPT_MEAN: [min(1.0, statistics.median_low(norms) / n) for n in norms],
        }[mode]
        total = sum(d[name] * w for d, w in zip(dense, weights, strict=True))
        if mode is Normalisation.KEPT_MEAN:
            # Templar's scatter_reduce mean: over the peers that kept the entry (a kept
            # random value is never exactly zero), 0 where nobody did.
            keepers = sum((d[name] != 0).to(torch.float64) for d in dense)
            out[name] = total / keepers.clamp(min=1)
        else:
            out[name] = total / len(dense)
    return out


@pytest.mark.parametrize("mode", list(Normalisation))
@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_sum_matches_dense_reference(name: str, mode: Normalisation) -> None:
    comp = COMPRESSORS[name]
    if mode is Normalisation.KEPT_MEAN and name in ("dct", "dense"):
        with pytest.raises(ValueError, match="kept_mean needs a top-k compressor"):
            Aggregator(comp, SHAPES, normalisation=mode)
        return
    gen = torch.Generator().manual_seed(3)
    payloads = [
        comp.encode({n: torch.randn(s, generator=gen) * (i + 1) for n, s in SHAPES.items()})
        for i in range(5)
    ]
    got = mean_of(comp, SHAPES, payloads, normalisation=mode)
    ref = reference(comp, payloads, mode)
    for n in SHAPES:
        assert got[n].shape == SHAPES[n]
        torch.testing.assert_close(got[n], ref[n].to(torch.float32), rtol=1e-5, atol=1e-6)


def test_empty_aggregate_is_none_and_zero_gradients_add_nothing() -> None:
    comp = COMPRESSORS["quantised"]
    assert Aggregator(comp, SHAPES).result() is None
    zeros = comp.encode({n: torch.zeros(s) for n, s in SHAPES.items()})
    assert all(float(t.abs().sum()) == 0 for t in mean_of(comp, SHAPES, [zeros]).values())


def test_kept_mean_clips_to_the_lower_middle_of_an_even_count_as_templar_does() -> None:
    # torch.median, which Templar's batch_decompress uses, gives the lower of the two middle
    # norms; the average of the two would clip the larger peers less.
    comp = COMPRESSORS["quantised"]
    gen = torch.Generator().manual_seed(5)
    payloads = [
        comp.encode({n: torch.randn(s, generator=gen) * (i + 1) for n, s in SHAPES.items()})
        for i in range(4)
    ]
    got = mean_of(comp, SHAPES, payloads, normalisation=Normalisation.KEPT_MEAN)
    ref = reference(comp, payloads, Normalisation.KEPT_MEAN)
    for n in SHAPES:
        torch.testing.assert_close(got[n], ref[n].to(torch.float32), rtol=1e-5, atol=1e-6)
