"""The Elias-Fano index code (core.compression.elias_fano): sizes, round trips, and one
reason for each kind of damage, at the kernel and through the codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import codec
from core.codec import Expected, InvalidPayload, PayloadMeta
from core.compression import TopKCompressor, TopKParams, cpu_fold, elias_fano
from core.compression.chunking import Plan
from tests.unit.compression_models import SHAPES, grads

META = PayloadMeta(window=10, uid=3, hotkey="hk-3", global_step=42, version="1")


def test_the_default_chunk_costs_eight_bits_an_entry() -> None:
    # 64 of 4096: 6 low bits each, and an upper vector of 64 ones and 64 zeros
    assert elias_fano.low_bits(4096, 64) == 6
    assert elias_fano.chunk_bytes(4096, 64) == 64
    # a chunk kept whole (a 512-vector's chunks of 64): no low bits, two upper bits each
    assert elias_fano.chunk_bytes(64, 64) == 16
    plan = Plan([("w", (128, 128))], 64, 64)
    assert elias_fano.nbytes(plan) == 4 * 64


def stream_of(plan: Plan, local) -> np.ndarray:
    out = np.full(elias_fano.nbytes(plan), 0xA5, np.uint8)  # encode owns every byte
    elias_fano.encode(np.asarray(local, np.int64), elias_fano.geometry(plan), out)
    return out


def decoded(plan: Plan, stream: np.ndarray) -> tuple[int, np.ndarray]:
    out = np.zeros(plan.total_entries, np.uint16)
    status, _ = elias_fano.decode_indices(stream, elias_fano.geometry(plan), out)
    return status, out


def test_round_trip_of_chosen_indices() -> None:
    plan = Plan([("a", (6, 6)), ("b", (64, 64)), ("c", (3,))], 8, 4)
    rng = np.random.default_rng(1)
    local = np.concatenate(
        [
            np.sort(rng.choice(m.chunk_size, m.k, replace=False))
            for m in plan.params
            for _ in range(m.n_chunks)
        ]
    )
    status, out = decoded(plan, stream_of(plan, local))
    assert status == elias_fano.OK
    assert np.array_equal(out, local)


def test_round_trip_where_high_parts_pass_a_byte() -> None:
    # 256 of 4096: L = 4, high parts up to 256, decoded entry by entry, not as bytes
    plan = Plan([("w", (64, 128))], 64, 256)
    assert plan.params[0].k == 256 and (4095 >> elias_fano.low_bits(4096, 256)) >= 255
    rng = np.random.default_rng(2)
    local = np.concatenate(
        [np.sort(rng.choice(4096, 256, replace=False)) for _ in range(plan.params[0].n_chunks)]
    )
    status, out = decoded(plan, stream_of(plan, local))
    assert status == elias_fano.OK
    assert np.array_equal(out, local)
    local[3] = local[2]  # a repeat
    assert decoded(plan, stream_of(plan, local))[0] == elias_fano.NOT_RISING


# One 6x6 chunk keeping 4: L = 3, an upper vector of 4 + 5 = 9 bits (two bytes, 7 pad bits).
SMALL = Plan([("w", (6, 6))], 8, 4)


@pytest.mark.parametrize(
    ("local", "status"),
    [
        ([1, 2, 3, 40], elias_fano.OUT_OF_RANGE),  # past the 36 positions of the chunk
        ([1, 5, 5, 9], elias_fano.NOT_RISING),  # a repeat
        ([1, 6, 5, 9], elias_fano.NOT_RISING),  # same high part, falling low part
    ],
)
def test_a_stream_that_decodes_to_bad_indices_is_refused(local, status) -> None:
    assert decoded(SMALL, stream_of(SMALL, local))[0] == status


def test_a_wrong_count_or_a_stray_pad_bit_is_refused() -> None:
    good = stream_of(SMALL, [1, 2, 3, 4])
    low_bytes = (4 * 3 + 7) // 8
    extra = good.copy()
    extra[low_bytes] |= 0x80  # one more entry in the upper vector
    assert decoded(SMALL, extra)[0] == elias_fano.COUNT
    missing = good.copy()
    missing[low_bytes] &= missing[low_bytes] - 1  # one entry fewer
    assert decoded(SMALL, missing)[0] == elias_fano.COUNT
    pad = good.copy()
    pad[-1] |= 0x80  # past the 9 upper bits
    assert decoded(SMALL, pad)[0] == elias_fano.TRAILING
    low_pad = good.copy()
    low_pad[low_bytes - 1] |= 0x80  # past the 12 low bits
    assert decoded(SMALL, low_pad)[0] == elias_fano.TRAILING


def payload_with(idx: torch.Tensor) -> bytes:
    comp = TopKCompressor()
    c = comp.encode(grads(0))
    tensors = dict(c.tensors) | {"idx": idx}
    return codec.encode(type(c)(spec=c.spec, shapes=c.shapes, tensors=tensors), META)


def reason(data: bytes) -> str:
    exp = Expected(version="1", codec=TopKCompressor(), shapes=SHAPES)
    with pytest.raises(InvalidPayload) as err:
        codec.decode(data, exp)
    return err.value.reason


def test_each_defect_has_its_own_reason_through_the_codec() -> None:
    comp = TopKCompressor()
    c = comp.encode(grads(0))
    plan = comp._plans.get(c.shapes)
    geo = elias_fano.geometry(plan)
    good = c.tensors["idx"]
    # the first parameter's first chunk: its upper vector follows its low fields
    k, low, upper, per_chunk, start = (int(geo[0, i]) for i in (2, 4, 5, 6, 7))
    ub = start + (k * low + 7) // 8
    ones = np.unpackbits(good[ub : ub + (upper + 7) // 8].numpy(), bitorder="little")
    zero_at = int(np.flatnonzero(ones[:upper] == 0)[0])
    extra = good.clone()
    extra[ub + zero_at // 8] |= 1 << (zero_at % 8)
    assert reason(payload_with(extra)) == "index_count_mismatch"
    # swap the low fields of two entries of one bucket: the indices fall
    local = comp.local_indices(c)
    m = plan.params[0]
    chunk = local[: m.k].numpy()
    highs = chunk >> low
    i = int(np.flatnonzero(highs[1:] == highs[:-1])[0])
    swapped = chunk.copy()
    swapped[[i, i + 1]] = swapped[[i + 1, i]]
    damaged = local.numpy().copy()
    damaged[: m.k] = swapped
    raw = np.empty(elias_fano.nbytes(plan), np.uint8)
    elias_fano.encode(damaged, geo, raw)
    assert reason(payload_with(torch.from_numpy(raw))) == "index_not_rising"
    # a chunk of 4096 has no pad bits: the stray bit goes into the 210-entry chunk
    odd = next(p for p, mm in enumerate(plan.params) if mm.chunk_size == 210)
    k, low, upper, per_chunk, start = (int(geo[odd, i]) for i in (2, 4, 5, 6, 7))
    assert upper % 8, "this model's odd chunk has pad bits"
    pad = good.clone()
    pad[start + per_chunk - 1] |= 0x80
    assert reason(payload_with(pad)) == "trailing_bits"
    # an index beyond its chunk: the odd chunk's last entry moved to the top bucket
    local_odd = local.numpy().copy()
    first = plan.params[odd].offset
    local_odd[first + plan.params[odd].k - 1] = ((upper - k) << low) | 0
    elias_fano.encode(local_odd, geo, raw)
    assert reason(payload_with(torch.from_numpy(raw.copy()))) == "index_out_of_range"
    assert reason(payload_with(good[:-1])) == "bad_shape"  # a byte short (or over)
    assert reason(payload_with(torch.cat([good, good[:1]]))) == "bad_shape"


def test_the_compiled_scan_names_the_parameter() -> None:
    comp = TopKCompressor()
    c = comp.encode(grads(0))
    plan = comp._plans.get(c.shapes)
    zeros = torch.zeros_like(c.tensors["idx"])
    with pytest.raises(InvalidPayload, match=plan.params[0].name):
        cpu_fold.scan(plan, comp.params, dict(c.tensors) | {"idx": zeros})


def test_every_warm_up_entry_runs() -> None:
    for kernel, example in elias_fano.WARMUP:
        kernel(*example())


@pytest.mark.parametrize("quantization_bins", [0, 4])
def test_the_default_payload_is_smaller_and_decodes_to_the_same(quantization_bins) -> None:
    new = TopKCompressor(TopKParams(quantization_bins=quantization_bins))
    old = TopKCompressor(TopKParams(quantization_bins=quantization_bins, index_code="packed"))
    g = grads(0)
    a, b = new.encode(g), old.encode(g)
    assert a.tensors["idx"].numel() < b.tensors["idx"].numel()
    assert new.estimate_bytes(SHAPES) == a.nbytes()
    da, db = new.decode(a), old.decode(b)
    assert all(torch.equal(da[n], db[n]) for n in SHAPES)
    # either compressor reads either payload: its spec says which code it is in
    assert all(torch.equal(old.decode(a)[n], db[n]) for n in SHAPES)


def test_the_default_chunk_refuses_an_index_past_it_in_both_passes() -> None:
    # 64 of 4096: the last entry's high part may reach 64, an index of 4096 and more; the
    # vector pass (decode_compact) and the loops (decode_indices) give the same verdict.
    plan = Plan([("w", (64, 64))], 64, 64)
    rng = np.random.default_rng(3)
    local = np.sort(rng.choice(4000, 64, replace=False))
    local[-1] = 4100
    raw = stream_of(plan, local)
    geo = elias_fano.geometry(plan)
    codes = np.zeros(16, np.uint8)
    compact = np.zeros(64, np.uint16)
    counts = np.zeros((1, 4), np.int64)
    verdict = elias_fano.decode_compact(raw, codes, 2, 4, geo, compact, counts)
    assert verdict == (elias_fano.OUT_OF_RANGE, 63)
    assert elias_fano.decode_indices(raw, geo, np.zeros(64, np.uint16)) == verdict
    local[-1] = local[-2]  # a repeat instead
    repeat = stream_of(plan, local)
    verdict = elias_fano.decode_compact(repeat, codes, 2, 4, geo, compact, counts)
    assert verdict[0] == elias_fano.NOT_RISING
    assert elias_fano.decode_indices(repeat, geo, np.zeros(64, np.uint16)) == verdict
