"""Object store on the local filesystem: one directory per bucket.

Layout: `<root>/<bucket>/objects/<key>` holds each object; `<root>/<bucket>/.tmp/` holds
uploads in flight. Every write goes to a temp file, is fsynced and renamed into place, so a
reader (in this or another process) sees the old object or the whole new one, never a torn one.
Credentials are not enforced: the directory's permissions are the access control.

Trust: every process that can write into a bucket's directory is trusted. Such a writer can
put any bytes at any key and set an object's mtime (its last_modified) back, so a late upload
would look on time: where peers are untrusted, use an S3 store (R2 stamps uploads itself).
What the store does refuse, so that a planted entry cannot lead it astray: a bucket whose
`objects/` or `.tmp/` is a symlink (it would read, and sweep temp files, outside the root),
and anything at a key that is not a regular file (a named pipe would hang a read; a symlink
would read another file).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from adapters.storage.files import atomic_write, fsync_dir, write_temp
from ports import (
    Blob,
    Bucket,
    BytesLike,
    Clock,
    InvalidKey,
    NotFound,
    ObjectMeta,
    StorageError,
    TooLarge,
    check_key,
)

T = TypeVar("T")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_CHUNK = 1 << 20
STALE_TEMP_SECONDS = 3600.0


def _ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


class LocalStore:
    """A bucket in a directory. Blocking I/O runs in worker threads."""

    def __init__(
        self,
        directory: Path | str,
        clock: Clock | None = None,
        direct_bytes: int | None = None,
    ) -> None:
        self._dir = Path(directory)
        self._direct_bytes = direct_bytes or None  # 0 (a setting's "off") as None
        self._objects = self._dir / "objects"
        self._tmp = self._dir / ".tmp"
        self._clock = clock
        self._stamp_lock = threading.Lock()
        self._last_ns = 0
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for sub in (self._objects, self._tmp):
            if sub.is_symlink() or sub.resolve() != self._dir.resolve() / sub.name:
                raise StorageError(
                    f"bucket {self._dir.name!r}: {sub.name} is a symlink; refusing to follow it"
                )
        self._root = self._objects.resolve()
        self.sweep_temp()

    def sweep_temp(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Remove uploads abandoned by a crashed writer; returns how many were removed.

        Temp files are never visible as objects, but a process killed mid-put leaves one
        behind. Only files untouched for `older_than` seconds go, so a writer in another
        process that is still working keeps its file.
        """
        removed = 0
        cutoff = time.time() - older_than
        for part in self._tmp.glob(".part-*"):
            with contextlib.suppress(OSError):
                if part.lstat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
        return removed

    @property
    def name(self) -> str:
        return self._dir.name

    def _path(self, key: str) -> Path:
        check_key(key)
        path = self._objects / key
        # Defence in depth behind check_key: a symlink inside the bucket must not lead out.
        if not path.resolve().is_relative_to(self._root):
            raise InvalidKey(key, "resolves outside the bucket directory")
        return path

    def _now_ns(self) -> int:
        if self._clock is None:
            return time.time_ns()
        return int(self._clock.now().timestamp() * 1e9)

    def _meta(self, key: str, st: os.stat_result) -> ObjectMeta:
        return ObjectMeta(
            key=key,
            size=st.st_size,
            last_modified=_ns_to_datetime(st.st_mtime_ns),
            etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
        )

    def _publish(self, key: str, tmp: Path) -> ObjectMeta:
        """Rename a finished temp file to `key`, stamping last_modified at publication."""
        path = self._path(key)
        try:
            for attempt in range(3):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with self._stamp_lock:
                        # Stamp and rename together so last_modified never goes backwards
                        # between two writers of this store.
                        stamp = max(self._now_ns(), self._last_ns)
                        self._last_ns = stamp
                        os.utime(tmp, ns=(stamp, stamp))
                        os.replace(tmp, path)
                    break
                except FileNotFoundError:
                    # A concurrent delete pruned the empty parent directory; make it again.
                    if attempt == 2:
                        raise
            fsync_dir(path.parent)
            return self._meta(key, path.stat())
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise StorageError(
                f"key {key!r} conflicts with an existing key that is a prefix of it (or it of "
                "them); the local store cannot hold both"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _put(self, key: str, chunks: Iterable[BytesLike], source: Path | None = None) -> ObjectMeta:
        self._path(key)
        tmp = write_temp(self._tmp, chunks, source=source, direct_bytes=self._direct_bytes)
        return self._publish(key, tmp)

    def _put_file(self, key: str, source: Path) -> ObjectMeta:
        if not source.is_file():
            raise FileNotFoundError(str(source))
        return self._put(key, (), source)

    async def put(self, key: str, data: BytesLike) -> ObjectMeta:
        return await asyncio.to_thread(self._put, key, [data])

    async def put_file(self, key: str, path: str) -> ObjectMeta:
        return await asyncio.to_thread(self._put_file, key, Path(path))

    async def put_stream(self, key: str, chunks: Iterable[BytesLike]) -> ObjectMeta:
        return await asyncio.to_thread(self._put, key, chunks)

    def _open(self, key: str, max_bytes: int | None) -> tuple[BinaryIO, ObjectMeta]:
        path = self._path(key)
        try:
            # Without following a symlink, and without blocking on a named pipe.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(key) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotFound(key) from exc  # a symlink is not an object
            raise
        # fstat the open file: a concurrent replace cannot change what we read from here on.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotFound(key)
        fh = os.fdopen(fd, "rb")
        meta = self._meta(key, st)
        if max_bytes is not None and meta.size > max_bytes:
            fh.close()
            raise TooLarge(key, meta.size, max_bytes)
        return fh, meta

    def _get(self, key: str, max_bytes: int | None) -> Blob:
        fh, meta = self._open(key, max_bytes)
        with fh:
            data = fh.read(meta.size)
        return Blob(meta=meta, data=data)

    async def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        return await asyncio.to_thread(self._get, key, max_bytes)

    def _get_file(self, key: str, dest: Path, max_bytes: int | None) -> ObjectMeta:
        fh, meta = self._open(key, max_bytes)
        with fh:
            remaining = meta.size

            def chunks() -> Iterable[bytes]:
                nonlocal remaining
                while remaining > 0:
                    piece = fh.read(min(_CHUNK, remaining))
                    if not piece:
                        break
                    remaining -= len(piece)
                    yield piece

            atomic_write(dest, chunks())
        return meta

    async def get_file(self, key: str, path: str, *, max_bytes: int | None = None) -> ObjectMeta:
        return await asyncio.to_thread(self._get_file, key, Path(path), max_bytes)

    def _get_stream(self, key: str, consume: Callable[[BinaryIO], T], max_bytes: int | None) -> T:
        fh, _meta = self._open(key, max_bytes)
        # An object is replaced by rename, never written in place: the open file cannot grow.
        with fh:
            return consume(fh)

    async def get_stream(
        self, key: str, consume: Callable[[BinaryIO], T], *, max_bytes: int | None = None
    ) -> T:
        return await asyncio.to_thread(self._get_stream, key, consume, max_bytes)

    def _head(self, key: str) -> ObjectMeta | None:
        path = self._path(key)
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return self._meta(key, st)

    async def head(self, key: str) -> ObjectMeta | None:
        return await asyncio.to_thread(self._head, key)

    async def server_time(self) -> datetime:
        # The clock that stamps this store's mtimes.
        return datetime.fromtimestamp(self._now_ns() / 1e9, UTC)

    def _list(self, prefix: str) -> list[ObjectMeta]:
        # Walk only the directory the prefix pins down, not the whole bucket.
        start = self._objects
        if "/" in prefix:
            start = self._objects / prefix.rsplit("/", 1)[0]
            if not start.resolve().is_relative_to(self._root):
                return []
        found: list[ObjectMeta] = []
        for dirpath, _dirs, files in os.walk(start):
            rel = Path(dirpath).relative_to(self._objects).as_posix()
            for fname in files:
                key = fname if rel == "." else f"{rel}/{fname}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, fname))
                except FileNotFoundError:
                    continue  # deleted while we walked
                if stat.S_ISREG(st.st_mode):  # a pipe or a symlink is not an object
                    found.append(self._meta(key, st))
        found.sort(key=lambda m: m.key)
        return found

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectMeta]:
        for meta in await asyncio.to_thread(self._list, prefix):
            yield meta

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove directories emptied by a delete, up to the bucket's object root."""
        while directory != self._objects and directory.is_relative_to(self._objects):
            try:
                directory.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return
                raise
            directory = directory.parent

    async def delete(self, keys: Iterable[str]) -> None:
        keys = [check_key(k) for k in keys]
        await asyncio.to_thread(self._delete, keys)

    async def close(self) -> None:
        return None


class LocalStoreOpener:
    """Opens `<root>/<bucket name>` directories as buckets."""

    def __init__(
        self,
        root: Path | str,
        clock: Clock | None = None,
        direct_bytes: int | None = None,
    ) -> None:
        self._root = Path(root)
        self._clock = clock
        self._direct_bytes = direct_bytes

    def open(self, bucket: Bucket) -> LocalStore:
        if not _BUCKET_NAME.fullmatch(bucket.name) or ".." in bucket.name:
            raise ValueError(f"bucket name {bucket.name!r} is not a safe directory name")
        return LocalStore(
            self._root / bucket.name, clock=self._clock, direct_bytes=self._direct_bytes
        )
