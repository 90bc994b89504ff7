"""`templar-comms warmup`: compile the gather's CPU kernels now, not in a neuron's first
gather (core/warmup.py says why). The Makefile's install runs it; the localnet and every
neuron warm up again before they start, which is a load from numba's cache once this ran."""

from __future__ import annotations

import time
from collections.abc import Iterable

import attrs
from numba.core.dispatcher import Dispatcher

from core.compression import TopKParams, elias_fano, kernels, select
from core.warmup import FORMATS, warm_up


@attrs.frozen
class Warmed:
    formats: int
    compiled: int  # kernel signatures numba compiled, in this process
    loaded: int  # ... and those it found in its cache
    seconds: float
    cache: str

    def describe(self) -> str:
        how = f"{self.compiled} compiled, {self.loaded} loaded from the cache"
        return (
            f"gather kernels ready for {self.formats} wire format(s) in {self.seconds:.1f} s "
            f"({how}; cache: {self.cache})"
        )


def _dispatchers() -> list[Dispatcher]:
    modules = (kernels, elias_fano, select)
    return [f for m in modules for f in vars(m).values() if isinstance(f, Dispatcher)]


def _counts() -> tuple[int, int]:
    stats = [d.stats for d in _dispatchers()]
    return (
        sum(sum(s.cache_misses.values()) for s in stats),
        sum(sum(s.cache_hits.values()) for s in stats),
    )


def warm(formats: Iterable[TopKParams] = FORMATS) -> Warmed:
    """Warm up `formats` and say what it took (counts are this process's)."""
    before = _counts()
    started = time.monotonic()
    done = warm_up(formats)
    seconds = time.monotonic() - started
    after = _counts()
    cache = next((str(d.stats.cache_path) for d in _dispatchers()), "-")
    return Warmed(done, after[0] - before[0], after[1] - before[1], seconds, cache)
