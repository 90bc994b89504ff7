"""Scratch files in a private temporary directory (the `ports.Scratch` adapter)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")


class TempScratch:
    """Files under a directory created on first use (inside `parent`, else the system temp).

    Put `parent` on the same disk as a local store so `put_file` copies within one disk, and
    never on a RAM-backed tmpfs for large checkpoints: the point is to keep them out of RAM.
    """

    def __init__(self, parent: str | Path | None = None) -> None:
        self._parent = None if parent is None else Path(parent)
        self._dir: Path | None = None

    @property
    def directory(self) -> Path:
        if self._dir is None:
            if self._parent is not None:
                self._parent.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="scratch-", dir=self._parent))
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
