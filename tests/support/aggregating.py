"""The aggregate of some payloads made as every caller makes it: check, prepare, add, result."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from core.aggregate import Aggregator
from core.compression import Checked


def mean_of(compressor, shapes, payloads, **options):
    """`Aggregator(compressor, shapes, **options)` over `payloads` (compressed, taken as
    checked); its result."""
    aggregator = Aggregator(compressor, shapes, **options)

    async def run():
        for compressed in payloads:
            # Unchecked on purpose: the sum's own guards are what some tests look at.
            await aggregator.add(aggregator.prepare(Checked(compressed)))
        return aggregator.result()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with ThreadPoolExecutor(1) as pool:  # called from a test's own event loop
        return pool.submit(asyncio.run, run()).result()
