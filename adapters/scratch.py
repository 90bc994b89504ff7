"""Scratch files in a private temporary directory (the `ports.Scratch` adapter)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")
_PREFIX = "scratch-"
_LOCK = ".owner"


def _locked(directory: Path) -> int | None:
    """A descriptor holding an exclusive lock on `directory`'s owner file; None if held."""
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def sweep_abandoned(parent: str | Path) -> list[Path]:
    """Remove the scratch directories under `parent` that no live process owns.

    A process killed mid-checkpoint leaves its scratch files (a checkpoint's worth of disk)
    behind. Each TempScratch holds a lock on its directory for as long as the process lives,
    and the kernel releases it when the process dies, however it dies; a directory whose lock
    can be taken is abandoned.
    """
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for directory in sorted(parent.glob(f"{_PREFIX}*")):
        if directory.is_symlink() or not directory.is_dir():
            continue
        fd = _locked(directory)
        if fd is None:
            continue
        try:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
        finally:
            os.close(fd)
    return removed


class TempScratch:
    """Files under a directory created on first use (inside `parent`, else the system temp).

    Put `parent` on the same disk as a local store so `put_file` copies within one disk, and
    never on a RAM-backed tmpfs for large checkpoints: the point is to keep them out of RAM.
    """

    def __init__(self, parent: str | Path | None = None) -> None:
        self._parent = None if parent is None else Path(parent)
        self._dir: Path | None = None
        self._lock: int | None = None

    @property
    def directory(self) -> Path:
        if self._dir is None:
            if self._parent is not None:
                self._parent.mkdir(parents=True, exist_ok=True)
            directory = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=self._parent))
            self._lock = _locked(directory)
            self._dir = directory
        return self._dir

    def create(self, hint: str = "") -> str:
        prefix = _UNSAFE.sub("_", hint)[:64] + "-" if hint else "tmp-"
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=prefix)
        os.close(fd)
        return name

    def open_write(self, path: str) -> BinaryIO:
        return open(path, "wb")

    def open_read(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def close(self) -> None:
        """Remove the directory and anything left in it."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
