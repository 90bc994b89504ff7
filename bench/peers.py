"""Peers' uploads for the benchmarks that give each peer a bucket and key pair of its own."""

from __future__ import annotations

import asyncio

from adapters.storage.obstore_store import ObstoreStoreOpener
from bench.gather import VERSION, WINDOW, _payload
from core import keys
from core.compression import Compressed
from ports import Bucket

UPLOADS = 8  # puts in flight: a few large payloads at a time stay well inside memory


async def upload(buckets: dict[int, Bucket], compressed: list[Compressed]) -> int:
    """Each peer's payload (the gradients in turn, its own meta) into its own bucket, under
    the key the gather looks for; returns one payload's size in bytes."""
    writer = ObstoreStoreOpener()
    gate = asyncio.Semaphore(UPLOADS)
    sizes: list[int] = []

    async def one(uid: int, bucket: Bucket) -> None:
        async with gate:
            data = _payload(compressed[uid % len(compressed)], uid)
            await writer.open(bucket).put(keys.gradient(WINDOW, uid, VERSION), data)
            sizes.append(len(data))

    try:
        await asyncio.gather(*(one(u, b) for u, b in buckets.items()))
    finally:
        writer.close()
    return max(sizes)
