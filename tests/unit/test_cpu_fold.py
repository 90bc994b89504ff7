"""The compiled sum's bookkeeping: one scan per payload (handed on by the checks), batches,
back-pressure on the event loop, the kernel variant the caller names."""

from __future__ import annotations

import asyncio
import math
import threading

import attrs
import numpy as np
import pytest
import torch

from core.compression import (
    Checked,
    ChunkSum,
    DenseCompressor,
    DenseSum,
    TopKCompressor,
    TopKParams,
    cpu_fold,
    elias_fano,
    kernels,
    make_sum,
)
from core.compression.compiled_sum import CompiledSum

SHAPES = {"a": (64, 64), "b": (40,)}


def payload(comp: TopKCompressor, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return comp.encode({k: torch.randn(s, generator=gen) for k, s in SHAPES.items()})


def test_the_sum_takes_the_checks_scan_instead_of_scanning_again(monkeypatch) -> None:
    comp = TopKCompressor(TopKParams())
    c = payload(comp, 0)
    calls = []
    real = cpu_fold.scan
    monkeypatch.setattr(cpu_fold, "scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    checked = comp.validate(c)
    total = CompiledSum(comp, comp.plan(SHAPES))
    total.prepare(checked)
    assert len(calls) == 1
    total.prepare(Checked(c))  # a payload checked elsewhere is scanned here
    assert len(calls) == 2


async def _add_all(total, peers, weigh) -> None:
    for c in peers:
        await total.add(total.prepare(c if isinstance(c, Checked) else Checked(c)), weigh)


async def test_batches_flush_as_they_fill_and_at_the_end() -> None:
    comp = TopKCompressor(TopKParams())
    peers = [payload(comp, s) for s in range(5)]
    plan = comp.plan(SHAPES)
    one = ChunkSum(comp, plan, "cpu")
    batched = CompiledSum(comp, plan, batch=2)
    for total in (one, batched):
        await _add_all(total, peers, lambda n: dict.fromkeys(n, 1.0))
    a, b = one.result(0.2), batched.result(0.2)
    assert all(torch.equal(a[k], b[k]) for k in SHAPES)


@pytest.mark.parametrize(
    ("peers", "batch"), [(None, 32), (1, 1), (20, 20), (32, 32), (40, 20), (64, 32), (65, 22)]
)
def test_batches_are_equal_when_the_peer_count_is_known(peers, batch) -> None:
    comp = TopKCompressor(TopKParams())
    plan = comp.plan(SHAPES)
    assert cpu_fold.BatchFold(cpu_fold.layout(plan), plan, comp.params, peers=peers).batch == batch


def test_a_model_whose_payloads_outgrow_the_batch_bytes_still_batches_peers(monkeypatch) -> None:
    # A batch is a pass over the whole sum: a large model's payloads, each beyond
    # BATCH_BYTES, must still share passes, within a share of the sum's own memory.
    monkeypatch.setattr(cpu_fold, "BATCH_BYTES", 1)
    comp = TopKCompressor(TopKParams())
    plan = comp.plan(SHAPES)
    fold = cpu_fold.BatchFold(cpu_fold.layout(plan), plan, comp.params)
    per_peer = plan.total_entries * np.dtype(cpu_fold.compact_dtype(comp.params)).itemsize
    sum_bytes = 4 * sum(math.prod(s) for s in SHAPES.values())
    assert fold.batch > 1
    assert 2 * fold.batch * per_peer <= sum_bytes * cpu_fold.SUM_SHARE


async def test_a_large_models_batches_add_what_one_peer_at_a_time_adds(monkeypatch) -> None:
    monkeypatch.setattr(cpu_fold, "BATCH_BYTES", 1)
    comp = TopKCompressor(TopKParams())
    peers = [payload(comp, s) for s in range(7)]
    plan = comp.plan(SHAPES)
    one, batched = CompiledSum(comp, plan, batch=1), CompiledSum(comp, plan, peers=7)
    assert batched._batch.batch > 1
    for total in (one, batched):
        await _add_all(total, peers, lambda n: dict.fromkeys(n, 0.5))
    a, b = one.result(1 / 7), batched.result(1 / 7)
    assert all(torch.equal(a[k], b[k]) for k in SHAPES)


async def test_the_last_flush_split_over_two_cores_adds_what_one_pass_adds() -> None:
    comp = TopKCompressor(TopKParams(target_chunk=8, topk=6))
    shapes = {f"w{i}": (16, 24) for i in range(5)}
    gen = torch.Generator().manual_seed(0)
    peers = [
        comp.encode({k: torch.randn(s, generator=gen) for k, s in shapes.items()}) for _ in range(3)
    ]
    plan = comp._plans.get(peers[0].shapes)
    halves = cpu_fold.layout(plan).halves()
    assert len(halves) == 2 and halves[1].first == len(halves[0].offsets)
    one = ChunkSum(comp, plan, "cpu")
    split = CompiledSum(comp, plan, batch=4)  # everything waits for the last flush
    for total in (one, split):
        await _add_all(total, peers, lambda n: {k: float(k[1:]) + 0.5 for k in n})
    a, b = one.result(), split.result()
    assert all(torch.equal(a[k], b[k]) for k in shapes)


def test_the_compiled_sum_refuses_what_it_cannot_do() -> None:
    comp = TopKCompressor(TopKParams(quantization_bins=8))  # 3-bit codes
    plan = comp.plan(SHAPES)
    assert not cpu_fold.supported(comp.params)
    with pytest.raises(ValueError, match="compiled sum"):
        CompiledSum(comp, plan)
    with pytest.raises(ValueError, match="compiled sum"):
        make_sum(comp, SHAPES, compiled=True)


def test_the_sum_is_chosen_once_from_compressor_device_and_format() -> None:
    assert isinstance(make_sum(TopKCompressor(TopKParams()), SHAPES), CompiledSum)
    three_bits = TopKCompressor(TopKParams(quantization_bins=8))
    assert isinstance(make_sum(three_bits, SHAPES), ChunkSum)
    assert isinstance(make_sum(TopKCompressor(TopKParams()), SHAPES, compiled=False), ChunkSum)
    assert isinstance(make_sum(DenseCompressor(), SHAPES), DenseSum)


async def test_an_add_waits_on_the_loop_while_a_full_batch_folds(monkeypatch) -> None:
    comp = TopKCompressor(TopKParams())
    peers = [payload(comp, s) for s in range(4)]
    plan = comp.plan(SHAPES)
    reference = ChunkSum(comp, plan, "cpu")
    total = CompiledSum(comp, plan, batch=2, background=True)
    release = threading.Event()
    real = kernels.fold
    monkeypatch.setattr(kernels, "fold", lambda *a: release.wait(5) and real(*a))
    ones = lambda n: dict.fromkeys(n, 1.0)  # noqa: E731
    await _add_all(total, peers[:3], ones)  # the first batch folds in the background
    fourth = asyncio.ensure_future(total.add(total.prepare(comp.validate(peers[3])), ones))
    ticks = 0
    while not fourth.done() and ticks < 3:  # the loop keeps running meanwhile
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 3 and not fourth.done()
    release.set()
    await fourth
    await _add_all(reference, peers, ones)
    a, b = total.result(0.25), reference.result(0.25)
    assert all(torch.equal(a[k], b[k]) for k in SHAPES)


async def test_a_batch_that_fails_to_fold_fails_the_sum_instead_of_leaving_it_short(
    monkeypatch,
) -> None:
    comp = TopKCompressor(TopKParams())
    peers = [Checked(payload(comp, s)) for s in range(3)]
    total = CompiledSum(comp, comp.plan(SHAPES), batch=1)

    def broken(*args):
        raise MemoryError("no room")

    monkeypatch.setattr(kernels, "fold", broken)
    ones = lambda n: dict.fromkeys(n, 1.0)  # noqa: E731
    await total.add(total.prepare(peers[0]), ones)  # its batch folds in the background
    with pytest.raises(MemoryError):
        await total.add(total.prepare(peers[1]), ones)  # waits for it, and sees it fail
    with pytest.raises(RuntimeError, match="earlier batch"):
        await total.add(total.prepare(peers[2]), ones)
    with pytest.raises(RuntimeError, match="earlier batch"):
        total.result()


@pytest.mark.parametrize("bins", [1, 3])
@pytest.mark.parametrize("code", ["packed", "elias_fano"])
def test_a_code_beyond_the_bins_is_refused_on_the_rising_path(bins, code) -> None:
    """Bin counts that do not fill their code width leave codes unused: 1 bin in 1 bit, 3
    bins in 2."""
    from core.invalid import InvalidPayload

    comp = TopKCompressor(TopKParams(quantization_bins=bins, index_code=code))
    c = payload(comp, 0)
    plan = comp._plans.get(c.shapes)
    val = c.tensors["val"].clone()
    val[0] = 0xFF  # the first entries get the largest code of the width
    tensors = dict(c.tensors) | {"val": val}
    for check in (cpu_fold.scan, lambda *a: comp._validate_entries(plan, tensors)):
        with pytest.raises(InvalidPayload) as err:
            check(plan, comp.params, tensors)
        assert err.value.reason == "bad_value_code"


@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("code", ["packed", "elias_fano"])
def test_checks_for_an_event_loop_keep_the_gil_and_for_a_worker_let_it_go(
    monkeypatch, quantized, code
) -> None:
    """A loop thread that lets the GIL go waits up to a switch interval to get it back: the
    caller says which it is."""
    comp = TopKCompressor(TopKParams(quantization_bins=4 if quantized else 0, index_code=code))
    c = payload(comp, 0)
    used = []

    def spied(variant: kernels.Checks, label: str) -> kernels.Checks:
        def spy(fn):
            return lambda *a: used.append(label) or fn(*a)

        return kernels.Checks(
            *(spy(getattr(variant, f.name)) for f in attrs.fields(kernels.Checks))
        )

    def spied_stream(variant, label: str):
        def spy(fn):
            return lambda *a: used.append(label) or fn(*a)

        return elias_fano.Checks(spy(variant.decode_compact), spy(variant.decode_indices))

    monkeypatch.setattr(kernels, "HOLDING", spied(kernels.HOLDING, "holding"))
    monkeypatch.setattr(kernels, "RELEASING", spied(kernels.RELEASING, "releasing"))
    monkeypatch.setattr(elias_fano, "HOLDING", spied_stream(elias_fano.HOLDING, "holding"))
    monkeypatch.setattr(elias_fano, "RELEASING", spied_stream(elias_fano.RELEASING, "releasing"))
    comp.validate(c, on_loop=True)
    on_loop = set(used)
    used.clear()
    comp.validate(c, on_loop=False)
    assert (on_loop, set(used)) == ({"holding"}, {"releasing"})


async def _sum_of(comp: TopKCompressor, peers, *, background: bool) -> dict:
    total = CompiledSum(comp, comp.plan(SHAPES), batch=2, peers=len(peers), background=background)
    await _add_all(total, peers, lambda norms: dict.fromkeys(norms, 1.0))
    return {k: v.clone() for k, v in total.result(1 / len(peers)).items()}


async def test_a_batch_filled_on_an_event_loop_copies_holding_the_gil(monkeypatch) -> None:
    comp = TopKCompressor(TopKParams())
    peers = [payload(comp, seed) for seed in range(5)]
    plain = ChunkSum(comp, comp.plan(SHAPES), "cpu")
    await _add_all(plain, peers, lambda norms: dict.fromkeys(norms, 1.0))
    reference = plain.result(1 / len(peers))
    copies = []
    real = kernels.copy_held
    monkeypatch.setattr(kernels, "copy_held", lambda out, src: copies.append(1) or real(out, src))
    on_loop = await _sum_of(comp, peers, background=True)
    assert len(copies) == len(peers)  # numpy's copy would let the GIL go
    for name in SHAPES:
        assert torch.equal(on_loop[name], reference[name])


def test_norms_are_correctly_rounded_square_roots_on_both_paths() -> None:
    """torch's vectorised sqrt missed the last bit for ~1.5% of float64 inputs here (this one
    among them, with AVX-512); both paths take Python's, so their norms agree to the bit."""
    comp = TopKCompressor(TopKParams())
    total = ChunkSum(comp, comp.plan(SHAPES), "cpu")
    squares = [64.71895115742501, 2.0]
    want = [math.sqrt(v) for v in squares]
    for given in (np.array(squares), torch.tensor(squares, dtype=torch.float64)):
        assert list(total._norms(given).values()) == want


def test_the_held_copy_refuses_arrays_of_another_length() -> None:
    out = np.zeros(4, np.uint16)
    assert not kernels.copy_held(out, np.ones(5, np.uint16))
    assert not out.any()
    assert kernels.copy_held(out, np.arange(4, dtype=np.uint16)) and out.tolist() == [0, 1, 2, 3]
