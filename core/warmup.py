"""Compile, or load from numba's on-disk cache, every CPU kernel a gather runs.

numba compiles a kernel (core/compression/kernels.py) the first time it is called with a new
combination of argument types, and caches the machine code beside the source. Compiling the
gather's set takes ~15 s of CPU; a neuron that does it inside its first gathers misses their
deadlines (a fresh clone's first localnet lost a third of its windows so). `warm_up` runs
every path a gather takes, on tiny payloads, so that the compiling happens before the
network does: at install (`templar-comms warmup`), in the localnet before it starts the
neurons, and in each neuron before its first window (a cache load, ~1 s, once compiled).

The payloads go through the same code as a peer's: encode, the codec's bytes, decode and its
checks, the running sum. Argument types, and so the signatures compiled, then follow from
that code, not from a list kept beside it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable

import attrs
import torch

from core import codec
from core.codec import Expected, PayloadMeta
from core.compression import TopKCompressor, TopKParams, cpu_fold
from core.compression.compiled_sum import CompiledSum
from core.compression.topk import INDEX_CODES
from core.invalid import InvalidPayload

__all__ = ["FORMATS", "warm_up"]

# Every wire format the compiled path supports (`cpu_fold.supported`): value codes of 1, 2,
# 4 and 8 bits, and float values, with either index code (a transition reads both).
FORMATS = tuple(
    TopKParams(quantization_bins=b, index_code=code)
    for code in INDEX_CODES
    for b in (2, 4, 16, 256, 0)
)

# Two parameters of equal size, so that the last fold splits them in halves between two
# threads (a strided view of the value tables) as a model's does; a third, smaller one.
_SHAPES = {"a": (16, 16), "b": (16, 16), "c": (8,)}
_VERSION = "0.0.0"
_PEERS = 3


# Formats warmed in this process: a dispatcher keeps what it compiled or loaded for the
# life of the process, so a second warm-up (the next neuron in a test) has nothing to do.
_warmed: set[TopKParams] = set()
_lock = threading.Lock()


def warm_up(formats: Iterable[TopKParams] = FORMATS) -> int:
    """Run the compiled gather path for each supported format in `formats`; returns how many
    formats are warm. Blocks for as long as compiling takes (little when cached)."""
    done = 0
    for params in formats:
        if not cpu_fold.supported(params):
            continue  # the torch path serves it: nothing to compile
        # Sizes change no argument type, so one small payload stands for any model.
        small = attrs.evolve(params, target_chunk=4, topk=2, use_dct=False, quantization_range=6.0)
        with _lock:
            if small not in _warmed:
                # Both variants of the checks: those that let the GIL go (worker threads)
                # and those that keep it (an event loop's thread), on a thread of their own
                # whoever calls this (the adds run an event loop).
                for on_loop in (False, True):
                    _in_thread(lambda p=small, h=on_loop: _exercise(p, on_loop=h))
                _warmed.add(small)
        done += 1
    return done


def _in_thread(job: Callable[[], object]) -> None:
    failed: list[BaseException] = []

    def run() -> None:
        try:
            job()
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="kernel-warmup", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


@torch.no_grad()
def _exercise(params: TopKParams, *, on_loop: bool) -> None:
    compressor = TopKCompressor(params)
    expected = Expected(version=_VERSION, codec=compressor, shapes=_SHAPES)
    gen = torch.Generator().manual_seed(0)
    payloads = []
    for uid in range(_PEERS):
        grads = {name: torch.randn(shape, generator=gen) for name, shape in _SHAPES.items()}
        meta = PayloadMeta(
            window=0, uid=uid, hotkey=f"warmup-{uid}", global_step=0, version=_VERSION
        )
        data = codec.encode(compressor.encode(grads), meta)
        payloads.append(codec.decode(data, expected, on_loop=on_loop).checked)
    first = payloads[0].compressed
    _refused(compressor, first, on_loop=on_loop)
    # Copy detection's sketch and a dense decode read the indices back on their own.
    compressor.positions(first, on_loop=on_loop)
    compressor.decode(first)
    # A batch of two for three peers: the first batch folds on its own thread over the
    # whole model, the last one at the end in two halves.
    plan = compressor.plan(_SHAPES)
    total = CompiledSum(compressor, plan, batch=2, peers=_PEERS, background=True)
    asyncio.run(_add_all(total, payloads, on_loop=on_loop))
    total.result(scale=0.5)


async def _add_all(total: CompiledSum, payloads: list, *, on_loop: bool) -> None:
    for checked in payloads:
        await total.add(total.prepare(checked, on_loop=on_loop), _ones)


def _ones(norms: dict[str, float]) -> dict[str, float]:
    return dict.fromkeys(norms, 1.0)


def _refused(compressor: TopKCompressor, payload, *, on_loop: bool) -> None:
    """An index beyond its chunk: the refusal's message reads it back with a kernel."""
    idx = payload.tensors["idx"].clone()
    idx[:] = 0xFF
    bad = attrs.evolve(payload, tensors={**payload.tensors, "idx": idx})
    try:
        compressor.validate(bad, on_loop=on_loop)
    except InvalidPayload:
        return
    raise AssertionError("an out-of-range index passed the compiled check")
