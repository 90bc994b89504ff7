"""The storage port: one bucket of an object store, and a way to open buckets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import BinaryIO, Protocol, TypeVar, runtime_checkable

from ports.objects import Blob, Bucket, ObjectMeta

BytesLike = bytes | bytearray | memoryview
T = TypeVar("T")


@runtime_checkable
class ObjectStore(Protocol):
    """One bucket. Every key is checked by `ports.objects.check_key` (`InvalidKey` otherwise).

    Any method may raise `AccessDenied` (bad or insufficient credentials),
    `TransientStorageError` (retryable, after the adapter's own retries) or `StorageError`.
    Writes are atomic for readers: a reader sees the old whole value or the new whole value.
    """

    @property
    def name(self) -> str:
        """The bucket name."""
        ...

    async def put(self, key: str, data: BytesLike) -> ObjectMeta:
        """Store `data` at `key`, replacing any object there; returns once durable."""
        ...

    async def put_file(self, key: str, path: str) -> ObjectMeta:
        """Store the file at `path` (streamed, for large objects); returns once durable.

        Raises `FileNotFoundError` if `path` does not exist.
        """
        ...

    async def put_stream(self, key: str, chunks: Iterable[BytesLike]) -> ObjectMeta:
        """Store the bytes `chunks` yields, streamed (the object need not fit in memory).

        `chunks` is iterated once, possibly in a worker thread, and the adapter may keep a
        chunk only until it asks for the next one. If iterating raises, nothing is stored
        (an earlier object at `key` is left as it was) and that exception propagates.
        """
        ...

    async def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        """Read a whole object.

        Raises `NotFound`, or `TooLarge` when the object is over `max_bytes`, which is decided
        before any of its body is transferred.
        """
        ...

    async def get_file(self, key: str, path: str, *, max_bytes: int | None = None) -> ObjectMeta:
        """Stream an object into the file `path` (replaced atomically; no partial file is left).

        Raises `NotFound` or `TooLarge` as `get` does.
        """
        ...

    async def get_stream(
        self, key: str, consume: Callable[[BinaryIO], T], *, max_bytes: int | None = None
    ) -> T:
        """Stream an object through `consume` and return what it returns.

        `consume` is called once, in a worker thread, with a blocking file object open at the
        start of the object (`read(n)` returns n bytes unless the object ends; `readinto`;
        not seekable), closed when `consume` returns. It sees one version of the object even
        if the key is replaced meanwhile. Raises `NotFound` or `TooLarge` as `get` does,
        before `consume` is called; reading past `max_bytes` (a body longer than announced)
        raises `TooLarge`. What `consume` raises propagates unchanged.
        """
        ...

    async def head(self, key: str) -> ObjectMeta | None:
        """Metadata of `key`, or None when it does not exist."""
        ...

    async def server_time(self) -> datetime:
        """The store's own clock now, as it stamps `last_modified` (S3: the `Date` header of a
        cheap request, whole seconds). Used to measure this machine's clock offset
        (core/clock_skew.py). Raises `StorageError` when the store cannot be reached."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[ObjectMeta]:
        """Every object whose key starts with `prefix`, in ascending key order (all pages)."""
        ...

    async def delete(self, keys: Iterable[str]) -> None:
        """Delete `keys`; keys that do not exist are not an error."""
        ...

    async def close(self) -> None:
        """Release connections and files; the store may not be used afterwards."""
        ...


@runtime_checkable
class StoreOpener(Protocol):
    """Opens a bucket with the credentials carried by a `Bucket`."""

    def open(self, bucket: Bucket) -> ObjectStore:
        """A store for `bucket`. Cheap: connections are made lazily and reused."""
        ...
