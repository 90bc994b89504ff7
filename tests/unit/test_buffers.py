"""The kept sum buffers: reused once nothing holds a result, never while something does."""

from __future__ import annotations

import torch

from core.compression import TopKCompressor, TopKParams
from core.compression.buffers import BufferPool
from core.compression.compiled_sum import CompiledSum


def address(array) -> int:
    return array.__array_interface__["data"][0]


def test_a_buffer_comes_back_once_its_result_is_gone() -> None:
    pool = BufferPool()
    result = torch.from_numpy(pool.take(10))[2:5]  # a result: a view of the buffer
    held = result.data_ptr() - 2 * 4
    assert address(pool.take(10)) != held  # still in use: another buffer
    del result
    assert address(pool.take(10)) == held  # free now: the same memory again


def test_two_per_size_so_a_neuron_holding_its_last_result_still_reuses() -> None:
    pool = BufferPool(per_size=2)
    current = torch.from_numpy(pool.take(10))
    seen = set()
    for _ in range(5):  # each window: gather the next while holding the last result
        last = current
        current = torch.from_numpy(pool.take(10))
        assert current.data_ptr() != last.data_ptr()
        seen.add(current.data_ptr())
    assert len(seen) == 2 and pool.kept() == 2


def test_sizes_are_bounded_and_clear_lets_go() -> None:
    pool = BufferPool(per_size=2, sizes=2)
    for n in (10, 20, 30):
        pool.take(n)
    assert pool.kept() == 2
    pool.clear()
    assert pool.kept() == 0


def test_a_sum_from_a_reused_buffer_starts_from_zero() -> None:
    comp = TopKCompressor(TopKParams())
    shapes = {"w": (64, 128), "b": (64,)}
    gen = torch.Generator().manual_seed(0)
    payload = comp.encode({k: torch.randn(s, generator=gen) for k, s in shapes.items()})
    plan = comp._plans.get(payload.shapes)

    def one_peer(peers):
        total = CompiledSum(comp, plan, peers=peers)
        for _ in range(peers):
            total.fold(payload, lambda n: dict.fromkeys(n, 1.0))
        return total.result()

    expected = {k: v.clone() for k, v in one_peer(1).items()}
    for _ in range(3):  # each sum takes the buffer the last one left, dirty
        got = one_peer(1)
        assert all(torch.equal(got[k], expected[k]) for k in shapes)
        del got
    empty = one_peer(0)
    assert all(not t.any() for t in empty.values())
