"""Object store on any S3-compatible service through obstore (Python bindings of Rust's
`object_store`); Cloudflare R2 is the default endpoint. An alternative to `s3.py` (boto3).

Requests run on obstore's own (tokio) runtime and are awaited on the event loop: a GET costs
no worker thread and little Python, which is what a gather of many small payloads spends its
time on (docs/storage.md#the-obstore-client). Blocking work that is ours (files, a consumer's
reads, a caller's chunk iterator) runs on the opener's thread pool.

One obstore client (an `S3Store`, with its connection pool) per (endpoint, bucket,
credentials), kept from one window to the next, idle ones bounded (least recently used
dropped first). Retries are obstore's (exponential backoff with jitter); what is left after
them surfaces as `TransientStorageError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.client
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import attrs
import obstore
from botocore.exceptions import ClientError
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import PreconditionError
from obstore.store import S3Store as RustS3Store

from adapters.storage.files import fsync_dir
from adapters.storage.s3_client import DELETE_BATCH, MiB
from adapters.storage.s3_errors import Context, denied, map_error
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

__all__ = ["ObstoreSettings", "ObstoreStore", "ObstoreStoreOpener", "check_endpoint"]

# A key nobody writes: server_time's signed HEAD of it is answered 404 (or 403), with a Date.
CLOCK_PROBE_KEY = ".templar-clock-probe"
T = TypeVar("T")
_pos = attrs.validators.gt(0)


@attrs.frozen
class ObstoreSettings:
    """Tuning for the obstore client. Defaults mirror `S3Settings` where both have a meaning."""

    connect_timeout: float = attrs.field(default=10.0, validator=_pos)
    # A stalled read, as boto3's read_timeout.
    read_timeout: float = attrs.field(default=60.0, validator=_pos)
    # obstore also bounds a whole request, body included (30 s by default): too short for a
    # multi-GB checkpoint on a slow link, so long by default; stalls are read_timeout's job.
    request_timeout: float = attrs.field(default=3600.0, validator=_pos)
    max_attempts: int = attrs.field(default=5, validator=_pos)  # first included, as botocore
    # No retry starts this long after the first attempt (obstore's retry_timeout).
    retry_timeout: float = attrs.field(default=180.0, validator=_pos)
    multipart_threshold: int = attrs.field(default=32 * MiB, validator=_pos)
    multipart_chunksize: int = attrs.field(default=8 * MiB, validator=attrs.validators.ge(5 * MiB))
    max_concurrency: int = attrs.field(default=8, validator=_pos)  # parts in flight per upload
    # Parts in flight for put_stream, each held in memory: its memory is about this x
    # multipart_chunksize (s3.py's max_in_memory_upload_chunks).
    stream_concurrency: int = attrs.field(default=2, validator=_pos)
    # Bytes per piece when a body is streamed (get_stream, get_file).
    stream_chunk: int = attrs.field(default=1 * MiB, validator=_pos)
    # Threads for the blocking work that is ours (files, consumers, chunk iterators).
    threads: int = attrs.field(default=16, validator=_pos)
    list_page_size: int = attrs.field(default=1000, validator=[_pos, attrs.validators.le(1000)])
    client_cache_size: int = attrs.field(default=256, validator=attrs.validators.ge(0))
    region: str = "auto"
    addressing_style: str = attrs.field(
        default="path", validator=attrs.validators.in_(("path", "virtual"))
    )

    def client_options(self, endpoint: str) -> dict[str, Any]:
        return {
            # Plain http only where the endpoint says so (a local SeaweedFS or MinIO).
            "allow_http": urlsplit(endpoint).scheme == "http",
            "connect_timeout": timedelta(seconds=self.connect_timeout),
            "read_timeout": timedelta(seconds=self.read_timeout),
            "timeout": timedelta(seconds=self.request_timeout),
        }

    def retry_config(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_attempts - 1,
            "retry_timeout": timedelta(seconds=self.retry_timeout),
        }


def check_endpoint(url: str) -> str:
    """`url` if obstore can use it as an S3 endpoint, else `ValueError` saying why."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"endpoint {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"endpoint {url!r} names no host")
    if parts.username or parts.password:
        raise ValueError("an endpoint must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError(f"endpoint {url!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"endpoint {url!r}: {exc}") from None
    return url


# -- error mapping ----------------------------------------------------------------------------

_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]+)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
# What a failed connection, a timeout or a broken body reads like in object_store's errors.
_CONNECTION = re.compile(
    r"error sending request|body error|connection|timed out|timeout|broken pipe|reset",
    re.IGNORECASE,
)
_STATUS_OF_TYPE = {"PermissionDeniedError": 403, "UnauthenticatedError": 401}


class RefusedForm(StorageError):
    """The endpoint does not implement the form of the request (501 NotImplemented)."""


def _summary(exc: BaseException) -> str:
    # obstore appends a long debug dump: the first part says it all.
    return str(exc).split("\n\nDebug source:")[0].strip()[:400]


def is_vendor_error(exc: BaseException) -> bool:
    # obstore raises FileNotFoundError (a builtin) for a missing object; the calls we wrap
    # touch no local file, so every such error there is obstore's.
    return isinstance(exc, ObstoreError | FileNotFoundError)


def map_obstore_error(exc: BaseException, ctx: Context) -> StorageError:
    """The port error for an obstore failure: the status and S3 error code obstore quotes are
    put through the boto3 adapter's mapping (`s3_errors.map_error`), so both clients say the
    same thing for the same answer."""
    text = str(exc)
    found = _STATUS.search(text)
    status = int(found.group(1)) if found else 0
    if not status:
        status = 404 if isinstance(exc, FileNotFoundError) else 0
        status = status or _STATUS_OF_TYPE.get(type(exc).__name__, 0)
        status = status or (412 if isinstance(exc, PreconditionError) else 0)
    code_match, message_match = _CODE.search(text), _MESSAGE.search(text)
    code = code_match.group(1) if code_match else ""
    message = message_match.group(1) if message_match else ""
    if status == 501 or code == "NotImplemented":
        said = f"{code or status}" + (f": {message}" if message else "")
        return RefusedForm(
            f"{ctx.where()}: the endpoint refused the form of the request ({said}); the request "
            "changed nothing. obstore sends plain bodies signed with their SHA-256 and no "
            "checksum trailer: the endpoint does not implement the header it names "
            "(storage_client = boto3 sends a Content-MD5 instead)"
        )
    if status == 401 or code == "Unauthorized":
        return denied(code or "401", ctx)
    if status or code:
        error = {"Error": {"Code": code or str(status), "Message": message}}
        reply = ClientError({**error, "ResponseMetadata": {"HTTPStatusCode": status}}, ctx.op)
        return map_error(reply, ctx)
    if _CONNECTION.search(text):
        return TransientStorageError(
            f"{ctx.where()}: connection failed after retries: {_summary(exc)}"
        )
    return StorageError(f"{ctx.where()}: {type(exc).__name__}: {_summary(exc)}")


# -- the client cache -------------------------------------------------------------------------

Ident = tuple[str, str, str, str]  # endpoint, bucket, access key id, digest of the secret


class ClientCache:
    """One obstore client per identity; at most `cap` kept, least recently used dropped first.

    Dropping is only forgetting: a call in flight holds its own reference, and obstore closes
    the client's connections when the last reference goes. So, unlike boto3's, nothing here
    needs leasing: a client is never closed under a request.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._lock = threading.Lock()
        self._clients: OrderedDict[Ident, RustS3Store] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)

    def get(self, ident: Ident, build: Callable[[], RustS3Store]) -> RustS3Store:
        with self._lock:
            client = self._clients.get(ident)
            if client is not None:
                self._clients.move_to_end(ident)
                return client
        client = build()  # outside the lock: no network, but not free either
        with self._lock:
            client = self._clients.setdefault(ident, client)
            self._clients.move_to_end(ident)
            while len(self._clients) > self._cap:
                self._clients.popitem(last=False)
        return client

    def clear(self) -> None:
        with self._lock:
            self._clients.clear()


def build_client(
    bucket: Bucket, settings: ObstoreSettings, *, bulk_delete: bool = True
) -> RustS3Store:
    """An obstore S3 client for `bucket` as the adapter uses it.

    obstore reads AWS_* variables from the environment for anything not passed, so what
    decides where and how a request goes is passed explicitly: the endpoint (also as
    `aws_endpoint_url_s3`, which would win over it), signing on, a signed payload, and the
    credentials through a provider (so that no AWS_SESSION_TOKEN joins them).
    """
    endpoint = check_endpoint(bucket.endpoint_url)
    key_id, secret = bucket.access_key_id, bucket.secret_access_key

    def credentials() -> dict[str, Any]:
        return {
            "access_key_id": key_id,
            "secret_access_key": secret,
            "token": None,
            "expires_at": None,
        }

    return RustS3Store(
        bucket.name,
        endpoint=endpoint,
        aws_endpoint_url_s3=endpoint,
        region=settings.region,
        virtual_hosted_style_request=settings.addressing_style == "virtual",
        skip_signature=False,
        unsigned_payload=False,
        request_payer=False,
        disable_bulk_delete=not bulk_delete,
        credential_provider=credentials,  # type: ignore[arg-type]
        client_options=settings.client_options(endpoint),  # type: ignore[arg-type]
        retry_config=settings.retry_config(),  # type: ignore[arg-type]
    )


# -- the store --------------------------------------------------------------------------------


def _etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def _meta(key: str, raw: dict[str, Any]) -> ObjectMeta:
    return ObjectMeta(
        key=key,
        size=raw["size"],
        last_modified=raw["last_modified"].astimezone(UTC),
        etag=_etag(raw.get("e_tag")),
    )


def _file_size(path: str) -> int:
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return os.path.getsize(path)


def _list_start(prefix: str) -> tuple[str | None, str | None]:
    """(directory, start-after) that cover every key beginning with `prefix`.

    object_store lists by path segment: its prefix `gradient-` would mean the directory
    `gradient-/`. So the adapter lists the prefix's directory from just below the prefix
    (S3's start-after, server side: prefix[:-1] sorts before every key that begins with the
    prefix) and stops once past it (`_past`). Where that start-after would be a directory
    name, none is used: SeaweedFS skips a directory's whole subtree after its name.
    """
    directory = prefix.rpartition("/")[0].rstrip("/")
    after = prefix[:-1]
    if prefix.endswith("/") or after.endswith("/"):
        after = ""
    return directory or None, after or None


def _past(key: str, prefix: str) -> bool:
    """True when no key listed after `key` can begin with `prefix`.

    S3 and R2 list in UTF-8 byte order; SeaweedFS in path-segment order (`c/x` before `c-1`).
    In either order the keys with a prefix are one run, so a key beyond the prefix in both
    orders ends the run in whichever order the service uses.
    """
    if key.startswith(prefix) or key < prefix:
        return False
    return key.split("/") > prefix.split("/")


class ObstoreStore:
    """One bucket through obstore. Use `ObstoreStoreOpener.open` to make one."""

    def __init__(self, bucket: Bucket, opener: ObstoreStoreOpener, ident: Ident) -> None:
        self._bucket = bucket
        self._opener = opener
        self._ident = ident
        self._settings = opener.settings
        self._closed = False

    def __repr__(self) -> str:
        b = self._bucket
        return (
            f"ObstoreStore(bucket={b.name!r}, endpoint={b.endpoint_url!r}, "
            f"key_id={b.access_key_id!r})"
        )

    @property
    def name(self) -> str:
        return self._bucket.name

    # -- plumbing ---------------------------------------------------------------------------

    def _ctx(self, op: str, key: str | None) -> Context:
        b = self._bucket
        return Context(b.name, b.endpoint_url, b.access_key_id, op, key)

    def _client(self, op: str) -> RustS3Store:
        if self._closed:
            raise StorageError(f"the store for bucket {self.name!r} is closed")
        try:
            return self._opener.client(self._ident, self._bucket)
        except (ValueError, ObstoreError) as exc:
            raise StorageError(f"{self._ctx(op, None).where()}: {_summary(exc)}") from exc

    @contextlib.contextmanager
    def _mapped(self, op: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if isinstance(exc, StorageError) or not is_vendor_error(exc):
                raise
            raise map_obstore_error(exc, self._ctx(op, key)) from exc

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._opener.executor, functools.partial(fn, *args))
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise StorageError(f"the opener of bucket {self.name!r} is closed") from exc
            raise

    async def _head(self, op: str, key: str) -> ObjectMeta | None:
        client = self._client(op)
        try:
            with self._mapped(op, key):
                raw = await obstore.head_async(client, key)
        except NotFound:
            return None
        return _meta(key, raw)

    async def _written(self, op: str, key: str, size: int, etag: str | None) -> ObjectMeta:
        """Metadata of what we just wrote: a PUT answers only an ETag."""
        meta = await self._head(op, key)
        if meta is None:
            raise TransientStorageError(f"{key!r} was written but is not visible yet")
        if etag is None or meta.etag == _etag(etag):
            return meta
        # A concurrent writer replaced it already. obstore does not show the PUT's Date, so
        # the replacement's stamp stands for ours: it is no earlier than our write.
        return attrs.evolve(meta, size=size, etag=_etag(etag))

    async def _put_parts(self, op: str, key: str, body: Any, multipart: bool, parts: int) -> Any:
        client = self._client(op)
        with self._mapped(op, key):
            return await obstore.put_async(
                client,
                key,
                body,
                use_multipart=multipart,
                chunk_size=self._settings.multipart_chunksize,
                max_concurrency=parts,
            )

    async def _get(self, op: str, key: str, max_bytes: int | None) -> Any:
        """The GET response, its headers read and its body not: `TooLarge` refuses it here,
        dropping the connection without reading a byte of the body."""
        client = self._client(op)
        with self._mapped(op, key):
            resp = await obstore.get_async(client, key)
        size = resp.meta["size"]
        if max_bytes is not None and size > max_bytes:
            del resp
            raise TooLarge(key, size, max_bytes)
        return resp

    def _pieces(self, resp: Any, op: str, key: str) -> Iterator[bytes]:
        """The body in pieces, obstore's failures mapped as they come (in a worker thread)."""
        stream = resp.stream(min_chunk_size=self._settings.stream_chunk)
        while True:
            with self._mapped(op, key):
                try:
                    piece = next(stream)
                except StopIteration:
                    return
            yield piece

    # -- the port -----------------------------------------------------------------------------

    async def put(self, key: str, data: BytesLike) -> ObjectMeta:
        check_key(key)
        view = memoryview(data).cast("B")
        size = view.nbytes
        multipart = size >= self._settings.multipart_threshold
        concurrency = self._settings.max_concurrency
        put = await self._put_parts("put", key, view, multipart, concurrency)
        return await self._written("put", key, size, put.get("e_tag"))

    async def put_file(self, key: str, path: str) -> ObjectMeta:
        check_key(key)
        path = os.fspath(path)
        size = await self._in_thread(_file_size, path)
        multipart = size >= self._settings.multipart_threshold
        concurrency = self._settings.max_concurrency
        put = await self._put_parts("put_file", key, Path(path), multipart, concurrency)
        return await self._written("put_file", key, size, put.get("e_tag"))

    async def put_stream(self, key: str, chunks: Iterable[BytesLike]) -> ObjectMeta:
        check_key(key)
        threshold = self._settings.multipart_threshold
        source = iter(chunks)

        def head() -> tuple[list[bytes], int, bool]:
            # Up to the threshold in memory: a stream that ends there goes as one PUT.
            held, size = [], 0
            for chunk in source:
                piece = bytes(chunk)
                held.append(piece)
                size += len(piece)
                if size >= threshold:
                    return held, size, False
            return held, size, True

        held, size, ended = await self._in_thread(head)
        if ended:
            put = await self._put_parts("put_stream", key, b"".join(held), False, 1)
            return await self._written("put_stream", key, size, put.get("e_tag"))
        counted = [size]

        def rest() -> Iterator[bytes]:
            yield from held
            held.clear()
            for chunk in source:
                piece = bytes(chunk)
                counted[0] += len(piece)
                yield piece

        # obstore cuts equal parts of multipart_chunksize whatever the chunks' sizes, and
        # aborts the upload when the iterator raises (the exception comes through as it is).
        parts = self._settings.stream_concurrency
        put = await self._put_parts("put_stream", key, rest(), True, parts)
        return await self._written("put_stream", key, counted[0], put.get("e_tag"))

    async def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        check_key(key)
        resp = await self._get("get", key, max_bytes)
        size = resp.meta["size"]
        # The body is framed by its Content-Length, which is `size`: no more than that is
        # read, so the limit checked above holds for the body too.
        with self._mapped("get", key):
            data = bytes(await resp.bytes_async())
        if len(data) != size:
            raise TransientStorageError(f"{key!r}: read {len(data)} of {size} bytes")
        return Blob(meta=_meta(key, resp.meta), data=data)

    async def get_stream(
        self, key: str, consume: Callable[[BinaryIO], T], *, max_bytes: int | None = None
    ) -> T:
        check_key(key)
        resp = await self._get("get_stream", key, max_bytes)

        def run() -> T:
            # One GET, read as it arrives: one version of the object, no temp file.
            pieces = ChunkReader(self._pieces(resp, "get_stream", key))
            with BoundedReader(pieces, key, max_bytes) as reader:  # type: ignore[arg-type]
                return consume(reader)  # type: ignore[arg-type]

        return await self._in_thread(run)

    async def get_file(self, key: str, path: str, *, max_bytes: int | None = None) -> ObjectMeta:
        check_key(key)
        dest = Path(path)
        resp = await self._get("get_file", key, max_bytes)
        meta = _meta(key, resp.meta)

        def write() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    for piece in self._pieces(resp, "get_file", key):
                        fh.write(piece)
                    fh.flush()
                    if fh.tell() != meta.size:
                        raise TransientStorageError(f"{key!r}: read {fh.tell()} of {meta.size}")
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            fsync_dir(dest.parent)

        await self._in_thread(write)
        return meta

    async def head(self, key: str) -> ObjectMeta | None:
        check_key(key)
        return await self._head("head", key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectMeta]:
        directory, after = _list_start(prefix)
        client = self._client("list")
        with self._mapped("list", prefix or None):
            pages = obstore.list(
                client, directory, offset=after, chunk_size=self._settings.list_page_size
            )
        while True:
            with self._mapped("list", prefix or None):
                try:
                    page = await pages.__anext__()
                except StopAsyncIteration:
                    return
            for item in page:
                key = item["path"]
                if not key.startswith(prefix):
                    if _past(key, prefix):
                        return
                    continue
                try:
                    check_key(key)
                except StorageError:
                    continue  # written by another tool; no method here could read it
                yield _meta(key, item)

    async def delete(self, keys: Iterable[str]) -> None:
        batch = [check_key(k) for k in keys]
        for start in range(0, len(batch), DELETE_BATCH):
            chunk = batch[start : start + DELETE_BATCH]
            client = self._client("delete")
            try:
                with self._mapped("delete", None):
                    await obstore.delete_async(client, chunk)
            except RefusedForm:
                # object_store's DeleteObjects carries an x-amz-checksum-sha256 header beside
                # its Content-MD5; an endpoint that refuses it still takes DeleteObject, which
                # has no body: one request a key, on a client built for that.
                single = build_client(self._bucket, self._settings, bulk_delete=False)
                with self._mapped("delete", None):
                    await obstore.delete_async(single, chunk)

    def _date_sync(self, url: str) -> datetime:
        parts = urlsplit(url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = kind(parts.hostname, parts.port, timeout=self._settings.connect_timeout)
        try:
            conn.request("HEAD", f"{parts.path}?{parts.query}")
            resp = conn.getresponse()
            resp.read()
            date = resp.getheader("Date")
        except OSError as exc:
            where = self._ctx("server_time", None).where()
            raise TransientStorageError(f"{where}: {exc}") from exc
        finally:
            conn.close()
        if not date:
            raise TransientStorageError(f"bucket {self.name!r} answered without a Date header")
        return parsedate_to_datetime(date).astimezone(UTC)

    async def server_time(self) -> datetime:
        # obstore shows no response headers. A HEAD it signs (a presigned URL: the same
        # endpoint, bucket and keys), sent here, brings the service's Date back; any answer,
        # a 403 or 404 too, carries it, so read keys are enough.
        client = self._client("server_time")
        with self._mapped("server_time", None):
            url = await obstore.sign_async(client, "HEAD", CLOCK_PROBE_KEY, timedelta(minutes=5))
        return await self._in_thread(self._date_sync, url)

    async def close(self) -> None:
        # The client stays in the opener's cache for the next store of this bucket.
        self._closed = True


class ObstoreStoreOpener:
    """Opens buckets on S3-compatible services through obstore; one client per bucket and
    credentials, kept across windows (idle ones bounded by `client_cache_size`).

    `close()` drops every client and the worker threads; stores opened here stop working.
    """

    def __init__(self, settings: ObstoreSettings | None = None) -> None:
        self._settings = settings or ObstoreSettings()
        self._clients = ClientCache(self._settings.client_cache_size)
        self._closed = False
        self.executor = ThreadPoolExecutor(
            max_workers=self._settings.threads, thread_name_prefix="obstore"
        )

    @property
    def settings(self) -> ObstoreSettings:
        return self._settings

    @property
    def cached(self) -> int:
        """Clients held for reuse."""
        return len(self._clients)

    def client(self, ident: Ident, bucket: Bucket) -> RustS3Store:
        if self._closed:
            raise StorageError(f"the opener of bucket {bucket.name!r} is closed")
        return self._clients.get(ident, functools.partial(build_client, bucket, self._settings))

    def open(self, bucket: Bucket) -> ObstoreStore:
        # The secret takes part in the identity only as a digest, so it never sits in a key.
        digest = hashlib.sha256(bucket.secret_access_key.encode()).hexdigest()
        ident = (bucket.endpoint_url, bucket.name, bucket.access_key_id, digest)
        return ObstoreStore(bucket, self, ident)

    def close(self) -> None:
        self._closed = True
        self._clients.clear()
        self.executor.shutdown(wait=False)
