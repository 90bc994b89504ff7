"""The scratch port: private temporary files for streaming large objects through a store.

The domain may not touch the filesystem, yet a multi-gigabyte checkpoint must travel through
`ObjectStore.put_file` / `get_file` rather than sit in RAM twice. This port hands the domain
opaque paths and binary file objects and nothing more.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol, runtime_checkable


@runtime_checkable
class Scratch(Protocol):
    def create(self, hint: str = "") -> str:
        """The path of a new, empty file only this process uses; `hint` may appear in its name.

        The caller removes it with `remove` when done.
        """
        ...

    def open_write(self, path: str) -> BinaryIO:
        """`path` opened for writing from the start (truncated)."""
        ...

    def open_read(self, path: str) -> BinaryIO:
        """`path` opened for reading."""
        ...

    def remove(self, path: str) -> None:
        """Delete `path`; a missing file is not an error."""
        ...
