"""Putting our payloads and getting peers' payloads, with time-window checks.

`get` never raises: every outcome is a `Fetched` with a status and a reason, so one broken
or malicious peer can never take a gather down with it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import attrs

from core import keys
from core.windows import TimeWindow, Timing
from ports import (
    AccessDenied,
    Bucket,
    Clock,
    NotFound,
    ObjectMeta,
    ObjectStore,
    StorageError,
    StoreOpener,
    TooLarge,
    TransientStorageError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Status(enum.Enum):
    OK = "ok"
    NOT_FOUND = "not_found"
    TOO_EARLY = "too_early"
    TOO_LATE = "too_late"
    INVALID = "invalid"
    ERROR = "error"


@attrs.frozen
class Fetched(Generic[T]):
    """The outcome of fetching one peer's payload."""

    uid: int | None
    status: Status
    reason: str = ""
    payload: T | None = None
    meta: ObjectMeta | None = None
    nbytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@attrs.frozen(kw_only=True)
class ExchangeSettings:
    # How often to look again for an object that is not there yet.
    poll_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    # Uploads finishing at time_max still need a moment to become visible.
    grace_seconds: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    max_payload_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=attrs.validators.gt(0))
    # S3 and R2 report Last-Modified rounded down to the second: an upload at 12:00:00.7 reads
    # as 12:00:00. A stamp counts only when every moment it may stand for is inside the time
    # window (core/windows.py); 0 for stores with exact times.
    timestamp_resolution: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))


def _timing_status(timing: Timing) -> Status:
    return {Timing.TOO_EARLY: Status.TOO_EARLY, Timing.TOO_LATE: Status.TOO_LATE}.get(
        timing, Status.OK
    )


class Exchange:
    """One neuron's view: its own write store, an opener for peers' read buckets, a clock.

    `local` is an optional second store (a local directory) used by `put_local` /
    `get_local`, Templar's `local=True` path; it has exactly the same semantics.
    """

    def __init__(
        self,
        store: ObjectStore,
        opener: StoreOpener,
        clock: Clock,
        version: str,
        settings: ExchangeSettings | None = None,
        local: ObjectStore | None = None,
        scheme: keys.KeyScheme = keys.NATIVE,
    ) -> None:
        self.store = store
        self.scheme = scheme  # the profile's object names (core/profiles.py)
        self.opener = opener
        self.clock = clock
        self.version = keys.check_version(version)
        self.settings = settings or ExchangeSettings()
        self.local = local
        self._uploads: set[asyncio.Task[datetime]] = set()

    def key(self, kind: keys.KeyKind, window: int, uid: int | None) -> str:
        return self.scheme.for_kind(kind, window, self.version, uid)

    async def put(
        self, data: bytes, window: int, kind: keys.KeyKind, uid: int | None = None
    ) -> datetime:
        """Write our payload; returns its last_modified once it is durable and visible."""
        return (await self.store.put(self.key(kind, window, uid), data)).last_modified

    async def put_local(
        self, data: bytes, window: int, kind: keys.KeyKind, uid: int | None = None
    ) -> datetime:
        if self.local is None:
            raise RuntimeError("this exchange has no local store")
        return (await self.local.put(self.key(kind, window, uid), data)).last_modified

    def put_in_background(
        self, data: bytes, window: int, kind: keys.KeyKind, uid: int | None = None
    ) -> asyncio.Task[datetime]:
        """Start an upload and return at once, so training can go on; `flush` waits for it."""
        task = asyncio.ensure_future(self.put(data, window, kind, uid))
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)
        return task

    async def flush(self) -> None:
        """Wait for every background upload (errors are logged, not raised)."""
        if self._uploads:
            results = await asyncio.gather(*list(self._uploads), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("background upload failed: %s", result)

    async def get(
        self, bucket: Bucket, window: int, kind: keys.KeyKind, **options: Any
    ) -> Fetched[bytes]:
        """Fetch and time-check a peer's payload from `bucket` (see `get_from`)."""
        try:
            store = self.opener.open(bucket)
        except Exception as exc:  # a bucket comes from the chain: refusing it is the peer's fault
            reason = f"bad_bucket: {type(exc).__name__}: {exc}"
            return Fetched(uid=options.get("uid"), status=Status.ERROR, reason=reason)
        return await self.get_from(store, window, kind, **options)

    async def get_local(self, window: int, kind: keys.KeyKind, **options: Any) -> Fetched[bytes]:
        """`get_from` the local store; same options, same statuses."""
        if self.local is None:
            raise RuntimeError("this exchange has no local store")
        return await self.get_from(self.local, window, kind, **options)

    def _gave_up(self, deadline: float, time_window: TimeWindow | None) -> bool:
        if self.clock.monotonic() >= deadline:
            return True
        if time_window is None:
            return False
        return self.clock.now() > time_window.end + timedelta(seconds=self.settings.grace_seconds)

    async def get_from(
        self,
        store: ObjectStore,
        window: int,
        kind: keys.KeyKind,
        *,
        uid: int | None = None,
        time_window: TimeWindow | None = None,
        timeout: float = 30.0,
        max_bytes: int | None = None,
    ) -> Fetched[bytes]:
        """Fetch and time-check the payload of `kind` for `window` (and `uid`): its bytes,
        unread (core.decoding reads them).

        Polls until the object appears, `timeout` seconds pass, or the time window's end plus
        the grace has passed. Never raises for the peer's fault.
        """
        started = self.clock.monotonic()
        deadline = started + max(timeout, 0.0)
        limit = min(max_bytes or self.settings.max_payload_bytes, self.settings.max_payload_bytes)

        def done(status: Status, reason: str = "", **kw: object) -> Fetched[bytes]:
            return Fetched(
                uid=uid,
                status=status,
                reason=reason,
                seconds=self.clock.monotonic() - started,
                **kw,
            )

        try:
            key = self.key(kind, window, uid)
        except ValueError as exc:
            return done(Status.ERROR, f"bad request: {exc}")
        while True:
            try:
                blob = await store.get(key, max_bytes=limit)
                break
            except NotFound:
                if self._gave_up(deadline, time_window):
                    return done(Status.NOT_FOUND, f"{key} not found before the deadline")
                await self.clock.sleep(
                    min(self.settings.poll_interval, max(deadline - self.clock.monotonic(), 0))
                )
            except TooLarge as exc:
                return done(Status.INVALID, f"too_large: {exc.size} bytes > {exc.limit}")
            except AccessDenied as exc:
                return done(Status.ERROR, f"access_denied: {exc}")
            except TransientStorageError as exc:
                return done(Status.ERROR, f"transient: {exc}")
            except StorageError as exc:
                return done(Status.ERROR, f"storage: {exc}")
        meta, size = blob.meta, blob.meta.size
        if time_window is not None:
            timing = time_window.classify(meta.last_modified, self.settings.timestamp_resolution)
            status = _timing_status(timing)
            if status is not Status.OK:
                reason = (
                    f"uploaded {meta.last_modified.isoformat()}, window "
                    f"[{time_window.start.isoformat()}, {time_window.end.isoformat()}]"
                )
                return done(status, reason, meta=meta, nbytes=size)
        return done(Status.OK, meta=meta, payload=blob.data, nbytes=size)
