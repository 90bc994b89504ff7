"""Atomic file writes shared by the filesystem-touching store adapters."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from adapters.storage.direct import DirectSink

CHUNK = 1 << 20


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(
    directory: Path,
    chunks: Iterable[bytes | bytearray | memoryview] = (),
    *,
    source: Path | None = None,
    direct_bytes: int | None = None,
) -> Path:
    """Write `chunks` (or the file `source`) to a new temp file in `directory`, fsync it, and
    return its path. A file of `direct_bytes` or more goes around the page cache (see
    `DirectSink`); None keeps every file in it.

    The caller renames it into place (or deletes it); on error no temp file is left behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".part-")
    try:
        try:
            with DirectSink(fd, direct_bytes) as sink:
                if source is not None:
                    with open(source, "rb", buffering=0) as fh:
                        sink.write_from(fh)
                for chunk in chunks:
                    sink.write(chunk)
                sink.close()
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def atomic_write(path: Path, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
    """Replace `path` with `chunks` so that a reader sees the old file or the whole new one."""
    path = Path(path)
    tmp = write_temp(path.parent, chunks)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def read_chunks(path: Path, chunk: int = CHUNK) -> Iterable[bytes]:
    """The bytes of `path` in pieces of `chunk` bytes."""
    with open(path, "rb") as fh:
        while piece := fh.read(chunk):
            yield piece
