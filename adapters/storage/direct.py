"""Large files written around the page cache (O_DIRECT), small ones through it: the local
store's opt-in `direct_bytes` (`storage_direct_bytes`).

Big local objects are checkpoint shards and other multi-megabyte files that nobody on this
machine reads back soon. Written through the page cache they cost the kernel a copy into
newly allocated cache pages and push out pages the training run does use. Direct writes move
the bytes from one reused, page-aligned buffer straight to the disk: less CPU, but a read
that comes soon after goes to the disk (docs/storage.md has what was measured).

`DirectSink` decides per file: the first `direct_bytes` go into that buffer; a file that ends
before filling it is written normally (a gradient stays in the cache for the gather that
reads it next); a file that fills it switches its descriptor to O_DIRECT and goes on in
buffer-sized writes. Direct I/O wants the memory, the offset and the length aligned to the
device's block, so the last piece is padded to a whole block and the file truncated back to
its size. Where the filesystem refuses O_DIRECT the rest is written normally. Without
`direct_bytes` every write goes straight from the caller's memory, as a plain write would.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from typing import BinaryIO

__all__ = ["BLOCK", "DirectSink"]

# Alignment that satisfies every common device (logical blocks of 512 or 4096 bytes).
BLOCK = 4096

_spare: dict[int, list[mmap.mmap]] = {}
_spare_lock = threading.Lock()


def _take(size: int) -> mmap.mmap:
    """A page-aligned staging buffer, reused between files: a fresh one each time would fault
    its pages in again, the very cost direct writes avoid. There are as many as files were
    ever written at once."""
    with _spare_lock:
        free = _spare.get(size)
        if free:
            return free.pop()
    return mmap.mmap(-1, size)


def _give_back(buf: mmap.mmap) -> None:
    with _spare_lock:
        _spare.setdefault(len(buf), []).append(buf)


_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux and the BSDs; macOS has none


def _set_direct(fd: int, on: bool) -> bool:
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return True


class DirectSink:
    """Writes one new file through `fd` from position 0; `close()` finishes it (not the fd).
    Use it as a context manager so its buffer goes back for reuse even on an error.

    `direct_bytes` is the size from which a file goes around the page cache (a multiple of
    `BLOCK`); `None` writes every file normally.
    """

    def __init__(self, fd: int, direct_bytes: int | None) -> None:
        if direct_bytes is not None and (direct_bytes <= 0 or direct_bytes % BLOCK):
            raise ValueError(f"direct_bytes must be a positive multiple of {BLOCK}")
        self._fd = fd
        self._size = direct_bytes or (1 << 20)
        self._allow = direct_bytes is not None
        self._buf: mmap.mmap | None = _take(self._size)
        self._view = memoryview(self._buf)
        self._filled = 0
        self._offset = 0
        self._direct = False

    @property
    def direct(self) -> bool:
        """Whether this file went around the page cache."""
        return self._direct

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data).cast("B")
        if not self._allow:  # nothing to decide: straight from the caller's memory
            if self._filled:  # what write_from left, first
                self._flush()
            self._put(data)
            return
        while data:
            n = min(len(data), self._size - self._filled)
            self._view[self._filled : self._filled + n] = data[:n]
            self._filled += n
            data = data[n:]
            if self._filled == self._size:
                self._flush()

    def write_from(self, fh: BinaryIO) -> None:
        """Copy the rest of `fh` (opened unbuffered for the fewest copies) into the file."""
        while True:
            n = fh.readinto(self._view[self._filled :])
            if not n:
                return
            self._filled += n
            if self._filled == self._size:
                self._flush()

    def _flush(self) -> None:
        if self._allow and not self._direct and self._offset == 0:
            # Only before the first write: a file is written all one way or all the other.
            self._direct = _set_direct(self._fd, True)
        self._put(self._view[: self._filled])
        self._filled = 0

    def _put(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(self._fd, view[done:], self._offset + done)
            except OSError as exc:
                # EINVAL: the filesystem took the flag but not the alignment; go on normally.
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise
                self._direct = False
                _set_direct(self._fd, False)
        self._offset += len(view)

    def close(self) -> int:
        """Write what is left; returns the file's size."""
        size = self._offset + self._filled
        if self._filled and self._direct:
            padded = -(-self._filled // BLOCK) * BLOCK
            self._view[self._filled : padded] = bytes(padded - self._filled)
            self._put(self._view[:padded])
            os.ftruncate(self._fd, size)
        elif self._filled:
            self._put(self._view[: self._filled])
        self._filled = 0
        self._offset = size
        self._release()
        return size

    def _release(self) -> None:
        if self._buf is not None:
            self._view.release()
            _give_back(self._buf)
            self._buf = None

    def __enter__(self) -> DirectSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()
