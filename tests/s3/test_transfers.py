"""Large objects, size limits, concurrency and paging against SeaweedFS."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from adapters.storage.s3 import MiB, S3Settings, S3Store, S3StoreOpener
from ports import TooLarge
from tests.s3.server import SeaweedServer


class Calls:
    """Counts S3 operations on a store's client via botocore's event hooks (thread-safe)."""

    def __init__(self, store: S3Store) -> None:
        self.counts: Counter[str] = Counter()
        self.bodies: list = []
        self._lock = threading.Lock()
        events = store.client.meta.events
        events.register("before-call.s3", self._before)
        events.register("after-call.s3", self._after)

    def _before(self, model, **_: object) -> None:
        with self._lock:
            self.counts[model.name] += 1

    def _after(self, model, parsed, **_: object) -> None:
        with self._lock:
            if model.name == "GetObject" and "Body" in parsed:
                self.bodies.append(parsed["Body"])


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def _spy(store: S3Store) -> Calls:
    await store.head("warm-up")  # builds the client, so hooks can be attached to it
    return Calls(store)


async def test_64_mib_round_trip_goes_multipart_both_ways(
    seaweedfs: SeaweedServer, bucket_name: str, tmp_path: Path
) -> None:
    progress: Counter[str] = Counter()
    settings = S3Settings(multipart_chunksize=8 * MiB, multipart_threshold=8 * MiB)
    opener = S3StoreOpener(settings, progress=lambda key, n: progress.update({key: n}))
    store = opener.open(seaweedfs.bucket(bucket_name))
    calls = await _spy(store)
    size = 64 * MiB
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(size))
    want = hashlib.sha256(src.read_bytes()).hexdigest()

    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:  # proves the event loop stays free during the transfer
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(ticker())
    meta = await store.put_file("big/obj.bin", str(src))
    dest = tmp_path / "out" / "dest.bin"
    got = await store.get_file("big/obj.bin", str(dest), max_bytes=size)
    done.set()
    await beat

    assert meta.size == got.size == size
    assert meta.etag.endswith("-8"), meta.etag  # S3's multipart ETag: md5-of-md5s, part count
    assert calls.counts["CreateMultipartUpload"] == 1
    assert calls.counts["UploadPart"] == 8
    assert calls.counts["GetObject"] == 8  # ranged, concurrent parts
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == want
    assert _entries(dest.parent) == ["dest.bin"]
    assert progress["big/obj.bin"] == 2 * size  # once up, once down
    assert ticks > 10
    await store.close()
    opener.close()


async def test_get_refuses_an_oversized_object_without_reading_its_body(
    store: S3Store, tmp_path: Path
) -> None:
    await store.put("huge", os.urandom(16 * MiB))
    calls = await _spy(store)
    with pytest.raises(TooLarge) as info:
        await store.get("huge", max_bytes=1024)
    assert (info.value.size, info.value.limit) == (16 * MiB, 1024)
    [body] = calls.bodies
    assert body._amount_read == 0  # refused on Content-Length; not one byte was read
    assert body._raw_stream.closed  # the connection was dropped, not drained

    dest = tmp_path / "huge.bin"
    with pytest.raises(TooLarge):
        await store.get_file("huge", str(dest), max_bytes=MiB)
    assert calls.counts["GetObject"] == 1  # get_file decided on HEAD alone
    assert _entries(tmp_path) == []  # no destination, no temp file


async def test_concurrent_gets_of_64_objects(
    store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads = {f"peer/{i:02d}": os.urandom(256 * 1024) for i in range(64)}
    await asyncio.gather(*(store.put(k, v) for k, v in payloads.items()))
    calls = await _spy(store)
    busy, peak, lock = 0, 0, threading.Lock()
    inner = store._get_sync

    def counting(*args):  # wraps the worker-thread body of get()
        nonlocal busy, peak
        with lock:
            busy += 1
            peak = max(peak, busy)
        try:
            return inner(*args)
        finally:
            with lock:
                busy -= 1

    monkeypatch.setattr(store, "_get_sync", counting)
    blobs = await asyncio.gather(*(store.get(k, max_bytes=MiB) for k in payloads))
    assert {b.meta.key: b.data for b in blobs} == payloads
    assert calls.counts["GetObject"] == 64
    # More gets at once than asyncio's default executor (cpu + 4 threads) would allow.
    assert peak > min(32, (os.cpu_count() or 1) + 4), peak


async def test_list_follows_every_page_in_key_order(
    seaweedfs: SeaweedServer, bucket_name: str
) -> None:
    opener = S3StoreOpener(S3Settings(list_page_size=3))
    store = opener.open(seaweedfs.bucket(bucket_name))
    keys = [f"w/{i}" for i in (5, 1, 7, 3, 0, 2, 6, 4)] + ["x/0"]
    await asyncio.gather(*(store.put(k, b".") for k in keys))
    calls = await _spy(store)
    assert [m.key async for m in store.list("w/")] == sorted(keys[:-1])
    assert calls.counts["ListObjectsV2"] == 3
    await store.close()
    opener.close()


async def test_delete_batches_1000_keys_per_call(store: S3Store) -> None:
    real = ["d/a", "d/b", "keep"]
    await asyncio.gather(*(store.put(k, b".") for k in real))
    calls = await _spy(store)
    await store.delete(["d/a", *(f"none/{i}" for i in range(2098)), "d/b"])
    assert calls.counts["DeleteObjects"] == 3
    assert [m.key async for m in store.list()] == ["keep"]
