"""Client-side pieces of the S3 adapter: settings, the shared client slot, the integrity header
on writes, a size guard."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from ports import TransientStorageError

MiB = 1 << 20
DELETE_BATCH = 1000  # the most keys one DeleteObjects call accepts
Progress = Callable[[str, int], None]
"""Called as `progress(key, bytes_done_since_last_call)` from worker threads."""
_pos = attrs.validators.gt(0)


@attrs.frozen
class S3Settings:
    """Tuning for the S3 client. Defaults suit R2 and a gather of up to 64 peers."""

    max_pool_connections: int = attrs.field(default=64, validator=_pos)
    connect_timeout: float = attrs.field(default=10.0, validator=_pos)
    read_timeout: float = attrs.field(default=60.0, validator=_pos)
    retry_mode: str = attrs.field(
        default="standard", validator=attrs.validators.in_(("standard", "adaptive"))
    )
    max_attempts: int = attrs.field(default=5, validator=_pos)
    # S3 and R2 refuse parts under 5 MiB (except the last one). Up to 32 MiB an object goes
    # as one PUT: a 16 MiB checkpoint shard as multipart cost two more requests and a
    # second pass through the part buffers (checkpoint saves measured 79-85% of a raw
    # put_file with 8 MiB, 92-93% with 32 MiB), and a 32 MiB retry is cheap.
    multipart_threshold: int = attrs.field(default=32 * MiB, validator=_pos)
    multipart_chunksize: int = attrs.field(default=8 * MiB, validator=attrs.validators.ge(5 * MiB))
    max_concurrency: int = attrs.field(default=8, validator=_pos)
    # Parts of a streamed upload (put_stream) held in memory at once, per upload: the
    # memory a checkpoint save costs is about this x multipart_chunksize x its concurrency
    # (a stream that ends below multipart_threshold is held whole, then sent as one PUT).
    max_in_memory_upload_chunks: int = attrs.field(default=2, validator=_pos)
    list_page_size: int = attrs.field(default=1000, validator=[_pos, attrs.validators.le(1000)])
    # Checking the CRC32 that S3 may send with a GET costs ~0.3 ms of CPU a payload (a fifth of
    # a GET's client time, measured): payloads are validated in full and checkpoints carry
    # their sha256, so by default it runs only where the service requires it.
    response_checksum_validation: str = attrs.field(
        default="when_required", validator=attrs.validators.in_(("when_supported", "when_required"))
    )
    # boto3 >= 1.36 defaults to `when_supported`, which over https sends PutObject and every
    # UploadPart as `Content-Encoding: aws-chunked` with a CRC32 trailer; R2 refuses that form
    # (docs/storage.md#r2-compatibility). `when_required` keeps every body a plain one, and
    # each write then carries a Content-MD5 computed before signing (`add_content_md5`).
    request_checksum_calculation: str = attrs.field(
        default="when_required", validator=attrs.validators.in_(("when_supported", "when_required"))
    )
    # Idle clients kept for reuse, least recently used closed first (a client a call is using
    # is never closed, nor counted here). A validator reads every peer's bucket each window
    # and a subnet has at most 256 uids: 256 keeps every peer's client warm from one window to
    # the next (0.41 MiB each, docs/storage.md#client-cache). 0: close a client as soon as no
    # call uses it.
    client_cache_size: int = attrs.field(default=256, validator=attrs.validators.ge(0))
    region: str = "auto"
    addressing_style: str = attrs.field(
        default="path", validator=attrs.validators.in_(("path", "virtual", "auto"))
    )

    def client_config(self) -> Config:
        return Config(
            region_name=self.region,
            signature_version="s3v4",
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"mode": self.retry_mode, "max_attempts": self.max_attempts},
            response_checksum_validation=self.response_checksum_validation,
            request_checksum_calculation=self.request_checksum_calculation,
            # A managed transfer opens up to max_concurrency more connections on the client.
            max_pool_connections=self.max_pool_connections + self.max_concurrency,
            s3={"addressing_style": self.addressing_style},
            tcp_keepalive=True,
        )

    def transfer_config(self) -> TransferConfig:
        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        # s3transfer's own setting, not among boto3's constructor arguments.
        config.max_in_memory_upload_chunks = self.max_in_memory_upload_chunks
        return config


# Writes whose body the service stores or acts on. Content-MD5 is the integrity header R2 lists
# as implemented for PutObject and UploadPart; DeleteObjects needs it on S3-compatible stores
# that predate flexible checksums (botocore >= 1.36 sends only a CRC32 header there).
MD5_OPERATIONS = ("PutObject", "UploadPart", "DeleteObjects")


def add_content_md5(request: Any, **_: Any) -> None:
    """botocore `before-sign` handler: a Content-MD5 of the body, unless the request already
    carries one or sends its checksum as a trailer.

    At `before-sign` the body is final and s3transfer has paused its progress callbacks, so
    reading it here neither reports bytes twice nor races the upload. Over https botocore
    then sends the payload unsigned: the MD5 is the body's one integrity check, as with
    boto3 < 1.36.
    """
    headers = request.headers
    if "Content-MD5" in headers or "x-amz-trailer" in headers:
        return
    body = request.body
    if body is None:
        body = b""
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(body, bytes | bytearray | memoryview):
        digest.update(body)
    else:
        start = body.tell()
        for chunk in iter(lambda: body.read(MiB), b""):
            digest.update(chunk)
        body.seek(start)
    headers["Content-MD5"] = base64.b64encode(digest.digest()).decode("ascii")


def register_integrity(client: Any) -> None:
    for op in MD5_OPERATIONS:
        client.meta.events.register(
            f"before-sign.s3.{op}", add_content_md5, unique_id=f"templar-content-md5-{op}"
        )


class ClientSlot:
    """The client for one bucket and set of credentials, built lazily, dropped on purge."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._client: Any = None
        self.busy = 0  # calls running on it; guarded by the ClientCache's lock

    @property
    def current(self) -> Any:
        return self._client

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def purge(self, client: Any) -> None:
        """Forget `client` (if still current) so the next call connects afresh."""
        with self._lock:
            if self._client is not client:
                return  # another thread already replaced it
            self._client = None
        # Requests in flight on other threads keep their connections until they finish.
        client.close()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


Ident = tuple[str, str, str, str]  # endpoint, bucket, access key id, digest of the secret


class ClientCache:
    """One ClientSlot per identity, leased for the length of each call.

    A slot no call is using is idle; at most `idle_cap` idle slots are kept, least recently
    leased closed first. A slot is never closed while leased, so no request loses its client.
    Leasing per call rather than per store keeps the cache bounded even when stores are
    opened each window and never closed (the domain services open a store per peer).
    """

    def __init__(self, idle_cap: int) -> None:
        self._idle_cap = idle_cap
        self._lock = threading.Lock()
        self._slots: OrderedDict[Ident, ClientSlot] = OrderedDict()  # least recent first
        self._busy = 0  # slots with calls running

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def peek(self, ident: Ident) -> ClientSlot | None:
        with self._lock:
            return self._slots.get(ident)

    def lease(self, ident: Ident, factory: Callable[[], Any]) -> ClientSlot:
        with self._lock:
            slot = self._slots.get(ident)
            if slot is None:
                slot = self._slots[ident] = ClientSlot(factory)
            else:
                self._slots.move_to_end(ident)
            if slot.busy == 0:
                self._busy += 1
            slot.busy += 1
        return slot

    def give_back(self, slot: ClientSlot) -> None:
        evicted: list[ClientSlot] = []
        with self._lock:
            slot.busy -= 1
            if slot.busy == 0:
                self._busy -= 1
            excess = len(self._slots) - self._busy - self._idle_cap
            if excess > 0:
                for ident, old in list(self._slots.items()):
                    if old.busy == 0:
                        del self._slots[ident]
                        evicted.append(old)
                        if len(evicted) == excess:
                            break
        # Closing drops a connection pool: outside the lock, so other leases need not wait.
        for old in evicted:
            old.close()

    def close(self) -> None:
        # `_busy` stays: calls still running give their slots back and bring it to 0.
        with self._lock:
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            slot.close()


class SizeGuard:
    """Progress hook that aborts a download running past the size checked by HEAD.

    The managed transfer makes its own HEAD, so an object replaced by a larger one in between
    would otherwise be downloaded whole before anyone noticed.
    """

    def __init__(self, key: str, limit: int, progress: Callable[[int], None] | None) -> None:
        self._key = key
        self._limit = limit
        self._progress = progress
        self._seen = 0
        self._lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self._lock:
            self._seen += amount
            seen = self._seen
        if seen > self._limit:
            raise TransientStorageError(f"{self._key!r} grew past {self._limit} bytes mid-download")
        if self._progress is not None:
            self._progress(amount)
