"""Object store on any S3-compatible service; Cloudflare R2 is the default endpoint.

One boto3 client per (endpoint, bucket, credentials), shared by every store the opener hands
out for them, kept from one window to the next (idle clients bounded, least recently used
closed first), and rebuilt after a connection-level failure. Blocking boto3 calls run on the
opener's own thread pool, as wide as the connection pool: asyncio's default executor has only
`cpu + 4` threads, which would cap a 64-peer gather at a handful of requests in flight.
Large objects go through boto3's managed transfer (multipart upload, concurrent ranged
download). Retries are botocore's (`standard` or `adaptive` mode); what is left after them
surfaces as `TransientStorageError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from adapters.storage.files import fsync_dir
from adapters.storage.s3_client import (
    DELETE_BATCH,
    ClientCache,
    Ident,
    MiB,
    Progress,
    S3Settings,
    SizeGuard,
    register_integrity,
)
from adapters.storage.s3_errors import (
    Context,
    is_connection_error,
    is_vendor_error,
    map_error,
)
from adapters.storage.streams import BoundedReader, ChunkReader
from ports import (
    Blob,
    Bucket,
    BytesLike,
    NotFound,
    ObjectMeta,
    StorageError,
    TooLarge,
    TransientStorageError,
    check_key,
)

__all__ = ["DELETE_BATCH", "MiB", "Progress", "S3Settings", "S3Store", "S3StoreOpener"]

T = TypeVar("T")


def _etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _announced(resp: dict[str, Any], key: str, max_bytes: int | None) -> int | None:
    """The body size a GET announced; `TooLarge` before any of the body is read when it is
    over `max_bytes`."""
    advertised = resp.get("ContentLength")
    if max_bytes is not None and advertised is not None and advertised > max_bytes:
        raise TooLarge(key, advertised, max_bytes)
    return advertised


class S3Store:
    """One bucket on an S3-compatible service. Use `S3StoreOpener.open` to make one."""

    def __init__(
        self,
        bucket: Bucket,
        clients: ClientCache,
        ident: Ident,
        factory: Callable[[], Any],
        settings: S3Settings,
        transfer: TransferConfig,
        executor: ThreadPoolExecutor,
        progress: Progress | None,
    ) -> None:
        self._bucket = bucket
        self._clients = clients
        self._ident = ident
        self._factory = factory
        self._settings = settings
        self._transfer = transfer
        self._executor = executor
        self._progress = progress
        self._closed = False

    def __repr__(self) -> str:
        b = self._bucket
        return (
            f"S3Store(bucket={b.name!r}, endpoint={b.endpoint_url!r}, key_id={b.access_key_id!r})"
        )

    @property
    def name(self) -> str:
        return self._bucket.name

    @property
    def client(self) -> Any:
        """The boto3 client of this bucket and credentials (None before the first call, after a
        purge, or once the opener's cache evicted it)."""
        slot = self._clients.peek(self._ident)
        return None if slot is None else slot.current

    # -- plumbing ---------------------------------------------------------------------------

    def _ctx(self, op: str, key: str | None) -> Context:
        b = self._bucket
        return Context(
            b.name,
            b.endpoint_url,
            b.access_key_id,
            op,
            key,
            checksums=self._settings.request_checksum_calculation,
        )

    def _call(self, op: str, key: str | None, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(client, *args)` in a worker thread, mapping vendor errors to port errors."""
        client = None
        slot = self._clients.lease(self._ident, self._factory)
        try:
            client = slot.get()
            return fn(client, *args)
        except Exception as exc:
            if isinstance(exc, StorageError) or not is_vendor_error(exc):
                raise
            if client is not None and is_connection_error(exc):
                slot.purge(client)
            raise map_error(exc, self._ctx(op, key)) from exc
        finally:
            self._clients.give_back(slot)

    async def _run(self, op: str, key: str | None, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StorageError(f"the store for bucket {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(self._call, op, key, fn, *args)
            )
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise StorageError(f"the opener of bucket {self.name!r} is closed") from exc
            raise

    def _callback(self, key: str) -> Callable[[int], None] | None:
        return None if self._progress is None else functools.partial(self._progress, key)

    def _meta(self, key: str, resp: dict[str, Any], size: int | None = None) -> ObjectMeta:
        return ObjectMeta(
            key=key,
            size=resp["ContentLength"] if size is None else size,
            last_modified=_utc(resp["LastModified"]),
            etag=_etag(resp.get("ETag")),
        )

    # -- blocking operations (worker threads) ------------------------------------------------

    def _head_sync(self, client: Any, key: str) -> ObjectMeta | None:
        try:
            resp = client.head_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise
        return self._meta(key, resp)

    def _written(self, client: Any, key: str, size: int, put: dict[str, Any] | None) -> ObjectMeta:
        """Metadata of what we just wrote; S3 answers a PUT without Last-Modified."""
        meta = self._head_sync(client, key)
        if put is None or (meta is not None and meta.etag == _etag(put.get("ETag"))):
            if meta is None:
                raise TransientStorageError(f"{key!r} was written but is not visible yet")
            return meta
        # A concurrent writer replaced it already: describe our write from the PUT response.
        date = put.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        stamp = parsedate_to_datetime(date) if date else datetime.now(UTC)
        return ObjectMeta(key=key, size=size, last_modified=_utc(stamp), etag=_etag(put["ETag"]))

    def _put_sync(self, client: Any, key: str, data: BytesLike) -> ObjectMeta:
        size = memoryview(data).nbytes
        if size < self._settings.multipart_threshold:
            resp = client.put_object(Bucket=self.name, Key=key, Body=bytes(data))
            return self._written(client, key, size, resp)
        client.upload_fileobj(
            io.BytesIO(data),
            self.name,
            key,
            Config=self._transfer,
            Callback=self._callback(key),
        )
        return self._written(client, key, size, None)

    def _put_file_sync(self, client: Any, key: str, path: str) -> ObjectMeta:
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        client.upload_file(
            path, self.name, key, Config=self._transfer, Callback=self._callback(key)
        )
        return self._written(client, key, os.path.getsize(path), None)

    def _put_stream_sync(self, client: Any, key: str, chunks: Iterable[BytesLike]) -> ObjectMeta:
        # Not seekable: boto3 reads one part at a time into memory, at most
        # `max_in_memory_upload_chunks` parts, and aborts the multipart upload if the
        # iterator raises, so no object appears.
        reader = ChunkReader(chunks)
        client.upload_fileobj(
            reader, self.name, key, Config=self._transfer, Callback=self._callback(key)
        )
        return self._written(client, key, reader.consumed, None)

    def _get_sync(self, client: Any, key: str, max_bytes: int | None) -> Blob:
        resp = client.get_object(Bucket=self.name, Key=key)
        # Closing an unread body drops its connection instead of draining it.
        with contextlib.closing(resp["Body"]) as body:
            advertised = _announced(resp, key, max_bytes)
            # A body longer than advertised must not get past the limit either.
            data = body.read() if max_bytes is None else body.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise TooLarge(key, len(data), max_bytes)
        if advertised is not None and len(data) != advertised:
            raise TransientStorageError(f"{key!r}: read {len(data)} of {advertised} bytes")
        return Blob(meta=self._meta(key, resp, len(data)), data=data)

    def _get_stream_sync(
        self, client: Any, key: str, consume: Callable[[BinaryIO], T], max_bytes: int | None
    ) -> T:
        # One GET, read as it arrives: one version of the object, no temp file.
        resp = client.get_object(Bucket=self.name, Key=key)
        with contextlib.closing(resp["Body"]) as body:
            _announced(resp, key, max_bytes)
            with BoundedReader(body, key, max_bytes) as reader:
                return consume(reader)

    def _get_file_sync(
        self, client: Any, key: str, dest: Path, max_bytes: int | None
    ) -> ObjectMeta:
        meta = self._head_sync(client, key)
        if meta is None:
            raise NotFound(key)
        if max_bytes is not None and meta.size > max_bytes:
            raise TooLarge(key, meta.size, max_bytes)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        try:
            client.download_file(
                self.name,
                key,
                tmp,
                Config=self._transfer,
                Callback=SizeGuard(key, meta.size, self._callback(key)),
            )
            if os.path.getsize(tmp) != meta.size:
                raise TransientStorageError(f"{key!r} changed while it was downloaded")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(dest.parent)
        return meta

    def _list_page(self, client: Any, prefix: str, token: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {
            "Bucket": self.name,
            "Prefix": prefix,
            "MaxKeys": self._settings.list_page_size,
        }
        if token:
            args["ContinuationToken"] = token
        return client.list_objects_v2(**args)

    def _delete_sync(self, client: Any, keys: list[str]) -> None:
        resp = client.delete_objects(
            Bucket=self.name,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
        # DeleteObjects answers 200 and lists per-key failures in its body.
        for err in resp.get("Errors", []):
            if err.get("Code") == "NoSuchKey":
                continue
            failure = ClientError({"Error": err}, "DeleteObjects")
            raise map_error(failure, self._ctx("delete", err.get("Key"))) from failure

    # -- the port -----------------------------------------------------------------------------

    async def put(self, key: str, data: BytesLike) -> ObjectMeta:
        check_key(key)
        return await self._run("put", key, self._put_sync, key, data)

    async def put_file(self, key: str, path: str) -> ObjectMeta:
        check_key(key)
        return await self._run("put_file", key, self._put_file_sync, key, os.fspath(path))

    async def put_stream(self, key: str, chunks: Iterable[BytesLike]) -> ObjectMeta:
        check_key(key)
        return await self._run("put_stream", key, self._put_stream_sync, key, chunks)

    async def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        check_key(key)
        return await self._run("get", key, self._get_sync, key, max_bytes)

    async def get_file(self, key: str, path: str, *, max_bytes: int | None = None) -> ObjectMeta:
        check_key(key)
        return await self._run("get_file", key, self._get_file_sync, key, Path(path), max_bytes)

    async def get_stream(
        self, key: str, consume: Callable[[BinaryIO], T], *, max_bytes: int | None = None
    ) -> T:
        check_key(key)
        return await self._run("get_stream", key, self._get_stream_sync, key, consume, max_bytes)

    async def head(self, key: str) -> ObjectMeta | None:
        check_key(key)
        return await self._run("head", key, self._head_sync, key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectMeta]:
        token: str | None = None
        while True:
            page = await self._run("list", prefix or None, self._list_page, prefix, token)
            for item in page.get("Contents", []):
                key = item["Key"]
                try:
                    check_key(key)
                except StorageError:
                    continue  # written by another tool; no method here could read it
                yield ObjectMeta(
                    key=key,
                    size=item["Size"],
                    last_modified=_utc(item["LastModified"]),
                    etag=_etag(item.get("ETag")),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def delete(self, keys: Iterable[str]) -> None:
        batch = [check_key(k) for k in keys]
        for start in range(0, len(batch), DELETE_BATCH):
            chunk = batch[start : start + DELETE_BATCH]
            await self._run("delete", None, self._delete_sync, chunk)

    def _server_time_sync(self, client: Any) -> datetime:
        # Any answer carries the service's Date, a 403 or 404 too: a read key is enough.
        try:
            headers = client.head_bucket(Bucket=self.name)["ResponseMetadata"]["HTTPHeaders"]
        except ClientError as exc:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        date = headers.get("date")
        if not date:
            raise TransientStorageError(f"bucket {self.name!r} answered without a Date header")
        return _utc(parsedate_to_datetime(date))

    async def server_time(self) -> datetime:
        return await self._run("server_time", None, self._server_time_sync)

    async def close(self) -> None:
        # The client stays in the opener's cache for the next store of this bucket.
        self._closed = True


class S3StoreOpener:
    """Opens buckets on S3-compatible services; clients are shared per bucket and credentials.

    A store holds no client: each call leases its bucket's client from the opener's cache, so
    a store opened for the same peer next window finds the client (and its connections) warm.
    Idle clients are kept up to `client_cache_size`, least recently used closed first.
    `on_client`, if given, is called with each client built: a seam for instrumentation and
    tests (register botocore event handlers there). `close()` releases every client and the
    worker threads; stores opened here stop working.
    """

    def __init__(
        self,
        settings: S3Settings | None = None,
        *,
        progress: Progress | None = None,
        on_client: Callable[[Any], None] | None = None,
    ):
        self._settings = settings or S3Settings()
        self._progress = progress
        self._on_client = on_client
        self._session = boto3.session.Session()
        # Only for building clients: opening a store never waits for a build.
        self._session_lock = threading.Lock()
        self._clients = ClientCache(self._settings.client_cache_size)
        self._executor = ThreadPoolExecutor(
            max_workers=self._settings.max_pool_connections, thread_name_prefix="s3"
        )
        # One for every store: a gather opens a store per peer, every window.
        self._transfer = self._settings.transfer_config()

    @property
    def settings(self) -> S3Settings:
        return self._settings

    @property
    def cached(self) -> int:
        """Clients held, leased or idle (a purged one counts until its next build)."""
        return len(self._clients)

    def _make_client(self, bucket: Bucket) -> Any:
        # boto3 sessions are not thread-safe; creating clients from one under a lock is.
        with self._session_lock:
            client = build_client(self._session, bucket, self._settings)
        if self._on_client is not None:
            self._on_client(client)
        return client

    def open(self, bucket: Bucket) -> S3Store:
        # The secret takes part in the identity only as a digest, so it never sits in a key.
        digest = hashlib.sha256(bucket.secret_access_key.encode()).hexdigest()
        ident = (bucket.endpoint_url, bucket.name, bucket.access_key_id, digest)
        return S3Store(
            bucket,
            self._clients,
            ident,
            functools.partial(self._make_client, bucket),
            self._settings,
            self._transfer,
            self._executor,
            self._progress,
        )

    def close(self) -> None:
        self._clients.close()
        self._executor.shutdown(wait=False)


def build_client(session: boto3.session.Session, bucket: Bucket, settings: S3Settings) -> Any:
    """A boto3 client for `bucket` as the adapter uses it: `settings`' config, and a
    Content-MD5 on every write body."""
    client = session.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        aws_access_key_id=bucket.access_key_id,
        aws_secret_access_key=bucket.secret_access_key,
        config=settings.client_config(),
    )
    register_integrity(client)
    return client
