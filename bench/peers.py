"""Peers' uploads for the benchmarks that give each peer a bucket and key pair of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from adapters.storage.obstore_store import ObstoreStoreOpener
from bench.common import stats
from core import codec, keys
from core.codec import PayloadMeta
from core.compression import Compressed
from ports import Bucket

VERSION = "bench"
WINDOW = 1
# Puts in flight: a few large payloads at a time stay well inside memory, and a fresh
# bucket's first put (~0.2 s while SeaweedFS grows the bucket's volumes) overlaps the others.
UPLOADS = 8


def payload(compressed: Compressed, uid: int) -> bytes:
    """Peer `uid`'s wire payload of `compressed` for the benchmarks' window."""
    meta = PayloadMeta(window=WINDOW, uid=uid, hotkey=f"hk{uid}", global_step=1, version=VERSION)
    return codec.encode(compressed, meta)


async def upload(buckets: dict[int, Bucket], compressed: list[Compressed]) -> int:
    """Each peer's payload (the gradients in turn, its own meta) into its own bucket, under
    the key the gather looks for; returns one payload's size in bytes."""
    writer = ObstoreStoreOpener()
    gate = asyncio.Semaphore(UPLOADS)
    sizes: list[int] = []

    async def one(uid: int, bucket: Bucket) -> None:
        async with gate:
            data = payload(compressed[uid % len(compressed)], uid)
            await writer.open(bucket).put(keys.gradient(WINDOW, uid, VERSION), data)
            sizes.append(len(data))

    try:
        await asyncio.gather(*(one(u, b) for u, b in buckets.items()))
    finally:
        writer.close()
    return max(sizes)


# What the shaped-network and large-model benchmarks time: both raw GETs and the gather on
# the default client.
KINDS = ("raw_boto3", "raw_obstore", "gather_obstore")


def timed_row(row: dict[str, object], times: Callable[[str], list[float]]) -> dict[str, float]:
    """Adds each kind's timing to `row`, and the gather's ratio to each raw GET (medians);
    returns the medians."""
    for kind in KINDS:
        row[kind] = stats(times(kind))
    med = {kind: row[kind]["median_s"] for kind in KINDS}  # type: ignore[index]
    row["gather_vs_raw_obstore"] = med["gather_obstore"] / med["raw_obstore"]
    row["gather_vs_raw_boto3"] = med["gather_obstore"] / med["raw_boto3"]
    return med
