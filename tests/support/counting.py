"""A store wrapper that counts the requests an S3 service would see.

A listing costs one request per page of 1,000 keys (ListObjectsV2's most, and R2's) and a
delete one per 1,000 keys (DeleteObjects), so a count over the memory store says what the
same calls would cost on R2. `CountingOpener` shares one `Counter` across every bucket it
opens: a reader's cost is the sum over the validators it asks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import BinaryIO, TypeVar

from ports import Blob, Bucket, BytesLike, ObjectMeta, ObjectStore, StoreOpener

T = TypeVar("T")
PAGE = 1000


class CountingStore:
    def __init__(self, inner: ObjectStore, counts: Counter[str] | None = None) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter() if counts is None else counts

    @property
    def name(self) -> str:
        return self.inner.name

    async def put(self, key: str, data: BytesLike) -> ObjectMeta:
        self.counts["put"] += 1
        return await self.inner.put(key, data)

    async def put_file(self, key: str, path: str) -> ObjectMeta:
        self.counts["put"] += 1
        return await self.inner.put_file(key, path)

    async def put_stream(self, key: str, chunks: Iterable[BytesLike]) -> ObjectMeta:
        self.counts["put"] += 1
        return await self.inner.put_stream(key, chunks)

    async def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        self.counts["get"] += 1
        return await self.inner.get(key, max_bytes=max_bytes)

    async def get_file(self, key: str, path: str, *, max_bytes: int | None = None) -> ObjectMeta:
        self.counts["get"] += 1
        return await self.inner.get_file(key, path, max_bytes=max_bytes)

    async def get_stream(
        self, key: str, consume: Callable[[BinaryIO], T], *, max_bytes: int | None = None
    ) -> T:
        self.counts["get"] += 1
        return await self.inner.get_stream(key, consume, max_bytes=max_bytes)

    async def head(self, key: str) -> ObjectMeta | None:
        self.counts["head"] += 1
        return await self.inner.head(key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectMeta]:
        self.counts["list"] += 1  # the first page, even an empty one
        seen = 0
        async for meta in self.inner.list(prefix):
            if seen and seen % PAGE == 0:
                self.counts["list"] += 1
            seen += 1
            yield meta

    async def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.counts["delete"] += -(-len(keys) // PAGE)
        self.counts["deleted"] += len(keys)  # objects, not requests
        await self.inner.delete(keys)

    async def close(self) -> None:
        await self.inner.close()

    def requests(self) -> int:
        return sum(n for op, n in self.counts.items() if op != "deleted")


class CountingOpener:
    def __init__(self, inner: StoreOpener) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter()

    def open(self, bucket: Bucket) -> CountingStore:
        return CountingStore(self.inner.open(bucket), self.counts)

    def requests(self) -> int:
        return sum(n for op, n in self.counts.items() if op != "deleted")
