"""A store wrapper that injects faults: latency, errors, truncated or corrupted bodies.

Used by the reliability tests and benchmarks; with no faults configured it is a transparent
proxy (and passes the ObjectStore contract suite). Latency is spent on the injected clock, so
a test with a fake clock never really waits.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import BinaryIO, TypeVar

import attrs

from ports import Blob, Bucket, BytesLike, Clock, ObjectMeta, ObjectStore, StoreOpener

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Fault:
    """What happens to one operation. Rates are probabilities in [0, 1]."""

    latency: float = 0.0
    error_rate: float = 0.0
    error: Callable[[str], Exception] | None = None
    truncate_rate: float = 0.0
    corrupt_rate: float = 0.0


NO_FAULT = Fault()


class ChaosStore:
    """Wraps `inner`; `faults(op, key)` decides the fault of each call (op: put, get, ...)."""

    def __init__(
        self,
        inner: ObjectStore,
        clock: Clock,
        faults: Callable[[str, str], Fault] = lambda op, key: NO_FAULT,
        seed: int = 0,
    ) -> None:
        self._inner = inner
        self._clock = clock
        self._faults = faults
        self._rng = random.Random(seed)
        self.calls: list[tuple[str, str]] = []

    @property
    def name(self) -> str:
        return self._inner.name

    async def _enter(self, op: str, key: str) -> Fault:
        self.calls.append((op, key))
        fault = self._faults(op, key)
        if fault.latency > 0:
            await self._clock.sleep(fault.latency)
        if fault.error is not None and self._rng.random() < fault.error_rate:
            raise fault.error(f"chaos: injected failure of {op} {key!r}")
        return fault

    def _mangle(self, fault: Fault, data: bytes) -> bytes:
        if data and self._rng.random() < fault.truncate_rate:
            data = data[: self._rng.randrange(len(data))]
        if data and self._rng.random() < fault.corrupt_rate:
            buf = bytearray(data)
            for _ in range(max(1, len(buf) // 1000)):
                buf[self._rng.randrange(len(buf))] ^= 1 << self._rng.randrange(8)
            data = bytes(buf)
        return data

    async def put(self, key: str, data: BytesLike) -> ObjectMeta:
        await self._enter("put", key)
        return await self._inner.put(key, data)

    async def put_file(self, key: str, path: str) -> ObjectMeta:
        await self._enter("put_file", key)
        return await self._inner.put_file(key, path)

    async def put_stream(self, key: str, chunks: Iterable[BytesLike]) -> ObjectMeta:
        await self._enter("put_stream", key)
        return await self._inner.put_stream(key, chunks)

    async def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        fault = await self._enter("get", key)
        blob = await self._inner.get(key, max_bytes=max_bytes)
        data = self._mangle(fault, blob.data)
        # The metadata still claims the full size, as a cut-off HTTP body would.
        return blob if data is blob.data else Blob(meta=blob.meta, data=data)

    async def get_file(self, key: str, path: str, *, max_bytes: int | None = None) -> ObjectMeta:
        await self._enter("get_file", key)
        return await self._inner.get_file(key, path, max_bytes=max_bytes)

    async def get_stream(
        self, key: str, consume: Callable[[BinaryIO], T], *, max_bytes: int | None = None
    ) -> T:
        await self._enter("get_stream", key)
        return await self._inner.get_stream(key, consume, max_bytes=max_bytes)

    async def head(self, key: str) -> ObjectMeta | None:
        await self._enter("head", key)
        return await self._inner.head(key)

    async def server_time(self) -> datetime:
        await self._enter("server_time", "")
        return await self._inner.server_time()

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectMeta]:
        await self._enter("list", prefix)
        async for meta in self._inner.list(prefix):
            yield meta

    async def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        await self._enter("delete", ",".join(keys))
        await self._inner.delete(keys)

    async def close(self) -> None:
        await self._inner.close()


class ChaosOpener:
    """Opens buckets through `inner`, wrapping each in a ChaosStore with per-bucket faults."""

    def __init__(
        self,
        inner: StoreOpener,
        clock: Clock,
        faults: Callable[[str, str, str], Fault] = lambda bucket, op, key: NO_FAULT,
        seed: int = 0,
    ) -> None:
        self._inner = inner
        self._clock = clock
        self._faults = faults
        self._seed = seed

    def open(self, bucket: Bucket) -> ChaosStore:
        name = bucket.name
        return ChaosStore(
            self._inner.open(bucket),
            self._clock,
            lambda op, key: self._faults(name, op, key),
            seed=zlib.crc32(f"{self._seed}:{name}".encode()),
        )
