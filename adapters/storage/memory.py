"""In-memory object store: the unit-test fake. last_modified comes from the injected clock."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from adapters.storage.files import atomic_write, read_chunks
from ports import (
    AccessDenied,
    Blob,
    Bucket,
    BytesLike,
    Clock,
    NotFound,
    ObjectMeta,
    TooLarge,
    check_key,
)

T = TypeVar("T")


class MemoryStore:
    """One bucket held in a dict. Safe for concurrent tasks on one event loop."""

    def __init__(self, name: str, clock: Clock, *, writable: bool = True) -> None:
        self._name = name
        self._clock = clock
        self._writable = writable
        self._objects: dict[str, Blob] = {}
        self._latest = [clock.now()]  # shared with views: last_modified never goes backwards

    @property
    def name(self) -> str:
        return self._name

    def _with_access(self, writable: bool) -> MemoryStore:
        """A view of the same objects with other permissions (another set of credentials)."""
        view = MemoryStore(self._name, self._clock, writable=writable)
        view._objects = self._objects
        view._latest = self._latest
        return view

    def _check_write(self) -> None:
        if not self._writable:
            raise AccessDenied(f"bucket {self._name!r}: these credentials are read-only")

    def _stamp(self) -> datetime:
        self._latest[0] = max(self._latest[0], self._clock.now())
        return self._latest[0]

    async def put(self, key: str, data: BytesLike) -> ObjectMeta:
        check_key(key)
        self._check_write()
        body = bytes(data)
        meta = ObjectMeta(
            key=key,
            size=len(body),
            last_modified=self._stamp(),
            etag=hashlib.md5(body, usedforsecurity=False).hexdigest(),
        )
        self._objects[key] = Blob(meta=meta, data=body)
        await asyncio.sleep(0)
        return meta

    async def put_file(self, key: str, path: str) -> ObjectMeta:
        return await self.put(key, b"".join(read_chunks(Path(path))))

    async def put_stream(self, key: str, chunks: Iterable[BytesLike]) -> ObjectMeta:
        check_key(key)
        self._check_write()
        return await self.put(key, b"".join(chunks))

    def _lookup(self, key: str, max_bytes: int | None) -> Blob:
        check_key(key)
        blob = self._objects.get(key)
        if blob is None:
            raise NotFound(key)
        if max_bytes is not None and blob.meta.size > max_bytes:
            raise TooLarge(key, blob.meta.size, max_bytes)
        return blob

    async def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        await asyncio.sleep(0)
        return self._lookup(key, max_bytes)

    async def get_file(self, key: str, path: str, *, max_bytes: int | None = None) -> ObjectMeta:
        blob = self._lookup(key, max_bytes)
        await asyncio.to_thread(atomic_write, Path(path), [blob.data])
        return blob.meta

    async def get_stream(
        self, key: str, consume: Callable[[BinaryIO], T], *, max_bytes: int | None = None
    ) -> T:
        blob = self._lookup(key, max_bytes)
        with io.BytesIO(blob.data) as fh:
            return await asyncio.to_thread(consume, fh)

    async def head(self, key: str) -> ObjectMeta | None:
        check_key(key)
        await asyncio.sleep(0)
        blob = self._objects.get(key)
        return blob.meta if blob else None

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectMeta]:
        for key in sorted(k for k in self._objects if k.startswith(prefix)):
            blob = self._objects.get(key)
            if blob is not None:
                yield blob.meta
            await asyncio.sleep(0)

    async def delete(self, keys: Iterable[str]) -> None:
        keys = [check_key(k) for k in keys]
        self._check_write()
        for key in keys:
            self._objects.pop(key, None)
        await asyncio.sleep(0)

    async def server_time(self) -> datetime:
        return self._clock.now()

    async def close(self) -> None:
        return None


class MemoryStoreOpener:
    """Opens in-memory buckets; the same bucket name always reaches the same objects.

    Credentials whose access key id is listed in `read_only_keys` get a store that refuses
    writes with `AccessDenied`, as a read key would on R2.
    """

    def __init__(self, clock: Clock, read_only_keys: Iterable[str] = ()) -> None:
        self._clock = clock
        self._read_only = set(read_only_keys)
        self._buckets: dict[str, MemoryStore] = {}

    def open(self, bucket: Bucket) -> MemoryStore:
        store = self._buckets.setdefault(bucket.name, MemoryStore(bucket.name, self._clock))
        return store._with_access(writable=bucket.access_key_id not in self._read_only)
