"""File objects for streamed transfers: over an iterator of chunks (uploads), and over a
response body with a size bound (downloads)."""

from __future__ import annotations

import io
from collections.abc import Iterable

from ports import BytesLike, TooLarge


class ChunkReader(io.RawIOBase):
    """Read-only and not seekable. `read(n)` returns exactly `n` bytes unless the chunks run
    out: boto3 sizes each multipart part by what one read returns, and S3 refuses parts under
    5 MiB, so a short read in the middle would break the upload.
    """

    def __init__(self, chunks: Iterable[BytesLike]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")
        self.consumed = 0  # bytes handed out so far

    def readable(self) -> bool:
        return True

    def _take(self, limit: int) -> memoryview | None:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks)).cast("B")
            except StopIteration:
                return None
        piece, self._pending = self._pending[:limit], self._pending[limit:]
        self.consumed += len(piece)
        return piece

    def read(self, size: int | None = -1) -> bytes:
        pieces = []
        want = -1 if size is None or size < 0 else size
        while want != 0:
            piece = self._take(want if want > 0 else 1 << 30)
            if piece is None:
                break
            pieces.append(piece)
            if want > 0:
                want -= len(piece)
        return b"".join(pieces)  # the one copy: boto3 keeps each part until it is sent

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            piece = self._take(len(view) - filled)
            if piece is None:
                break
            view[filled : filled + len(piece)] = piece
            filled += len(piece)
        return filled


class BoundedReader(io.RawIOBase):
    """Reads a response body (anything with `readinto`) for `get_stream`'s consumer.

    `read(n)` loops until it has n bytes or the body ends (an HTTP body arrives in pieces of
    whatever size the socket gives). More than `limit` bytes raises `TooLarge`: a body longer
    than its Content-Length said must not get past the caller's bound.
    """

    def __init__(self, body: io.RawIOBase | io.BufferedIOBase, key: str, limit: int | None):
        super().__init__()
        self._body = body
        self._key = key
        self._limit = limit
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._limit is not None:
            # Whatever the consumer asks for, read at most one byte past the bound: that byte
            # is enough to tell a body that is too long.
            view = view[: max(self._limit + 1 - self.consumed, 0)]
        filled = 0
        while filled < len(view):
            n = self._body.readinto(view[filled:])
            if not n:
                break
            filled += n
        self.consumed += filled
        if self._limit is not None and self.consumed > self._limit:
            raise TooLarge(self._key, self.consumed, self._limit)
        return filled

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buf = bytearray(size)
        n = self.readinto(buf)
        del buf[n:]
        return bytes(buf)
