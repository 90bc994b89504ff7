"""Decode runners: where a payload is decoded, and a decoder's refusal as the peer's skip."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.codec import Expected
from core.compression import DenseCompressor, TopKCompressor, TopKParams
from core.decoding import (
    INLINE_BYTES,
    Inline,
    Pool,
    Rejected,
    Synchronous,
    decode,
    runner_for,
)
from core.exchange import Fetched, Status

SHAPES = {"w": (64, 64)}


def arrival(data: bytes = b"x") -> Fetched[bytes]:
    return Fetched(uid=1, status=Status.OK, payload=data, nbytes=len(data))


async def test_a_refusal_is_invalid_and_a_decoder_bug_an_error() -> None:
    def reject(uid: int, data: bytes) -> bytes:
        raise Rejected("bad_shape", "shape (3,) is not (4,)")

    def value_error(uid: int, data: bytes) -> bytes:
        raise ValueError("no")

    def buggy(uid: int, data: bytes) -> bytes:
        raise KeyError("oops")

    runner = Synchronous()
    r1, r2, r3 = [await decode(runner, fn, arrival()) for fn in (reject, value_error, buggy)]
    assert (r1.status, r1.reason.split(":")[0]) == (Status.INVALID, "bad_shape")
    assert (r2.status, r2.reason.split(":")[0]) == (Status.INVALID, "invalid")
    assert (r3.status, r3.reason.split(":")[0]) == (Status.ERROR, "decode_error")
    assert all(r.payload is None and r.nbytes == 1 for r in (r1, r2, r3))
    ok = await decode(runner, lambda uid, data: data.upper(), arrival())
    assert ok.ok and ok.payload == b"X"


@pytest.mark.parametrize(("runner", "on_loop"), [(Synchronous(), True), (Inline(), True)])
async def test_loop_runners_run_on_the_loops_thread(runner, on_loop) -> None:
    assert await runner.run(threading.get_ident) == threading.get_ident()
    assert runner.on_loop is on_loop


async def test_the_pool_runs_on_workers() -> None:
    pool = Pool(2)
    try:
        assert await pool.run(threading.get_ident) != threading.get_ident()
        assert not pool.on_loop and pool.threads
    finally:
        pool.close()


@pytest.mark.parametrize("slice_seconds", [60.0, 1e-9])
async def test_inline_calls_give_the_loop_a_pass_once_their_slice_is_spent(
    slice_seconds,
) -> None:
    inline = Inline(slice_seconds)
    order: list[str] = []
    calls = [asyncio.ensure_future(inline.run(order.append, f"call{i}")) for i in range(4)]
    asyncio.get_running_loop().call_soon(order.append, "loop")  # queued behind the calls
    await asyncio.gather(*calls)
    if slice_seconds > 1:  # one burst: all four before the loop's next pass
        assert order == ["call0", "call1", "call2", "call3", "loop"]
    else:  # the slice is spent at once: the loop gets its pass after the first call
        assert order[:2] == ["call0", "loop"] and sorted(order[2:]) == ["call1", "call2", "call3"]


def test_the_gathers_runner_is_inline_only_for_short_compiled_decodes() -> None:
    def expected(codec) -> Expected:
        return Expected(version="1", codec=codec, shapes=SHAPES)

    compiled = expected(TopKCompressor(TopKParams()))
    assert isinstance(runner_for(compiled), Inline)
    assert isinstance(runner_for(compiled, max_bytes=INLINE_BYTES + 1), Pool)
    assert isinstance(runner_for(compiled, sketch=True), Pool)
    assert isinstance(runner_for(expected(TopKCompressor(TopKParams(quantization_bins=8)))), Pool)
    assert isinstance(runner_for(expected(DenseCompressor())), Pool)
    assert runner_for(compiled, max_bytes=INLINE_BYTES + 1, workers=3).workers == 3
