"""The compiled CPU path (core.compression.cpu_fold) against the torch path it replaces:
same verdict on every payload, bit-identical sums and norms, across batch boundaries."""

from __future__ import annotations

import asyncio
import math

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.compression import ChunkSum, TopKCompressor, TopKParams, cpu_fold, packing
from core.compression.buffers import BUFFERS
from core.compression.chunking import INDEX_BITS
from core.compression.compiled_sum import CompiledSum
from core.invalid import InvalidPayload

dims = st.integers(1, 40)
shapes = st.dictionaries(
    st.text("abcdefghij.", min_size=1, max_size=12),
    st.one_of(st.tuples(dims), st.tuples(dims, dims), st.just(())),
    min_size=1,
    max_size=4,
)
# Every format the compiled path takes: float values and code widths 1, 2, 4, 8, with bin
# counts that fill their width and ones that leave codes unused (1, 3).
bins = st.sampled_from([0, 1, 2, 3, 4, 16, 256])
codes = st.sampled_from(["elias_fano", "packed"])


def payloads(shape_map, params, seed, n):
    comp = TopKCompressor(params)
    gen = torch.Generator().manual_seed(seed)
    return comp, [
        comp.encode({k: torch.randn(s, generator=gen) for k, s in shape_map.items()})
        for _ in range(n)
    ]


def one_payload(shape_map, target, topk, nbins, seed, code="elias_fano"):
    """The parameters, compressor, one payload and its plan for a drawn format."""
    params = TopKParams(target_chunk=target, topk=topk, quantization_bins=nbins, index_code=code)
    comp, (c,) = payloads(shape_map, params, seed, 1)
    return params, comp, c, comp._plans.get(c.shapes)


def summed(comp, shape_map, payloads, weigh, *, compiled, **kwargs):
    """The running sum of `payloads` as a gather takes it: checked, prepared, added."""
    plan = comp.plan(shape_map)
    total = CompiledSum(comp, plan, **kwargs) if compiled else ChunkSum(comp, plan, "cpu")

    async def add_all():
        return [await total.add(total.prepare(comp.validate(c)), weigh) for c in payloads]

    norms = asyncio.run(add_all())
    return total.result(0.5), norms


def unit(norms):
    return {k: (1.0 / v if v > 1e-12 else 0.0) for k, v in norms.items()}


def poison_kept_buffer(shape_map) -> None:
    """Leave a kept buffer of this model's size full of NaN: the next sum must not see it."""
    numel = sum(math.prod(s) for s in shape_map.values())
    BUFFERS.take(numel)[:] = float("nan")


@settings(max_examples=80, deadline=None)
@given(shapes, st.integers(1, 16), st.integers(1, 40), bins, st.integers(0, 2**31 - 1),
       st.integers(0, 7), st.integers(1, 3), st.booleans(), st.booleans(), codes)  # fmt: skip
def test_compiled_sum_equals_the_torch_sum(
    shape_map, target, topk, nbins, seed, n, batch, known, use_dct, code
):
    """Whatever the batching, whether the peer count is known (the scale then rides on the
    last batch), with or without the DCT, and from a reused buffer full of garbage."""
    params = TopKParams(
        target_chunk=target, topk=topk, quantization_bins=nbins, use_dct=use_dct, index_code=code
    )
    comp, peers = payloads(shape_map, params, seed, n)
    assert cpu_fold.supported(params)
    poison_kept_buffer(shape_map)
    fast, fast_norms = summed(
        comp, shape_map, peers, unit, compiled=True, batch=batch, peers=n if known else None
    )
    slow, slow_norms = summed(comp, shape_map, peers, unit, compiled=False)
    assert fast_norms == slow_norms
    for name in shape_map:
        assert torch.equal(fast[name], slow[name]), name


def verdict(fn):
    try:
        fn()
    except InvalidPayload as exc:
        return exc.reason
    return "ok"


@settings(max_examples=150, deadline=None)
@given(shapes, st.integers(1, 16), st.integers(1, 40), bins, st.integers(0, 2**31 - 1),
       st.data(), codes)  # fmt: skip
def test_compiled_checks_agree_with_torch_on_damaged_payloads(
    shape_map, target, topk, nbins, seed, data, code
):
    params, comp, c, plan = one_payload(shape_map, target, topk, nbins, seed, code)
    name = data.draw(st.sampled_from(["idx", "val"] if nbins else ["idx"]))
    raw = c.tensors[name].clone().view(torch.uint8)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, raw.numel() - 1))] = data.draw(st.integers(0, 255))
    tensors = dict(c.tensors) | {name: raw.view(c.tensors[name].dtype)}
    expected = verdict(lambda: comp._validate_entries(plan, tensors))
    assert verdict(lambda: cpu_fold.scan(plan, params, tensors)) == expected
    # On an event loop's thread the same checks run compiled to hold the GIL.
    assert verdict(lambda: on_a_loop(cpu_fold.scan, plan, params, tensors)) == expected


def on_a_loop(fn, *args):
    async def run():
        return fn(*args)

    return asyncio.run(run())


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(1, 16), st.integers(1, 40), bins, st.integers(0, 2**31 - 1), codes)
def test_the_gil_holding_checks_find_what_the_releasing_ones_find(
    shape_map, target, topk, nbins, seed, code
):
    params, _, c, plan = one_payload(shape_map, target, topk, nbins, seed, code)
    off, on = (
        cpu_fold.scan(plan, params, c.tensors),
        on_a_loop(cpu_fold.scan, plan, params, c.tensors),
    )
    assert np.array_equal(off.found, on.found)
    assert (off.entries is None) == (on.entries is None)
    if off.entries is not None:
        assert np.array_equal(off.entries, on.entries)


def test_wrong_sized_arrays_never_reach_the_kernels() -> None:
    comp, (c,) = payloads({"w": (64, 64)}, TopKParams(), 0, 1)
    plan = comp._plans.get(c.shapes)
    for name in ("idx", "val"):
        for bad in (c.tensors[name][:-1], c.tensors[name].to(torch.int16), c.tensors[name][:0]):
            with pytest.raises(InvalidPayload, match="is not"):
                cpu_fold.scan(plan, comp.params, dict(c.tensors) | {name: bad})


def reversed_chunks(comp, plan, c):
    """The same payload with each chunk's entries in decreasing index order (our encoder
    sends them increasing, which the checks take a faster path for). Only the packed index
    code can say that: Elias-Fano indices rise by construction."""
    p, t, entries = comp.params, c.tensors, plan.total_entries
    local = packing.unpack(t["idx"], entries, INDEX_BITS)
    values = packing.unpack(t["val"], entries, p.value_bits) if p.quantized else t["val"]
    order = torch.cat(
        [
            (m.offset + torch.arange(m.n_entries).view(m.n_chunks, m.k)).flip(1).reshape(-1)
            for m in plan.params
        ]
    )
    tensors = dict(t) | {"idx": packing.pack(local[order], INDEX_BITS)}
    tensors["val"] = packing.pack(values[order], p.value_bits) if p.quantized else values[order]
    return attrs.evolve(c, tensors=tensors)


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(1, 16), st.integers(1, 40), bins, st.integers(0, 2**31 - 1))
def test_entries_in_any_order_within_a_chunk_pass_and_sum_the_same(
    shape_map, target, topk, nbins, seed
):
    params, comp, c, plan = one_payload(shape_map, target, topk, nbins, seed, "packed")
    other = reversed_chunks(comp, plan, c)
    assert verdict(lambda: cpu_fold.scan(plan, params, other.tensors)) == "ok"
    a, a_norms = summed(comp, shape_map, [c], unit, compiled=True)
    b, b_norms = summed(comp, shape_map, [other], unit, compiled=True)
    assert a_norms == b_norms
    assert all(torch.equal(a[k], b[k]) for k in shape_map)
