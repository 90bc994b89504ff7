"""The file objects behind put_stream and get_stream (S3 adapter): exact reads, bounds."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.storage.streams import BoundedReader, ChunkReader
from ports import TooLarge

chunk_lists = st.lists(st.binary(max_size=64), max_size=12)
read_sizes = st.lists(st.integers(min_value=0, max_value=80), max_size=20)


@given(chunks=chunk_lists, sizes=read_sizes)
def test_chunk_reader_reads_exactly_what_is_asked_until_the_end(chunks, sizes) -> None:
    data = b"".join(chunks)
    reader = ChunkReader(iter(chunks))
    got, pos = [], 0
    for n in sizes:
        piece = reader.read(n)
        assert len(piece) == min(n, len(data) - pos)  # short only at the end
        got.append(piece)
        pos += len(piece)
    got.append(reader.read())
    assert b"".join(got) == data and reader.consumed == len(data)
    assert reader.read(5) == b""


class Dribble(io.RawIOBase):
    """A body that hands out at most 3 bytes per call, as a slow socket does."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readinto(self, b) -> int:
        piece = self._data.read(min(3, len(b)))
        b[: len(piece)] = piece
        return len(piece)


@given(data=st.binary(max_size=200), sizes=read_sizes)
def test_bounded_reader_fills_each_read_from_a_dribbling_body(data, sizes) -> None:
    reader = BoundedReader(Dribble(data), "k", None)
    pos = 0
    for n in sizes:
        piece = reader.read(n)
        assert piece == data[pos : pos + n]
        pos += len(piece)
    assert reader.read() == data[pos:]


def test_bounded_reader_refuses_a_body_longer_than_the_limit() -> None:
    reader = BoundedReader(io.BytesIO(b"x" * 11), "k", 10)
    assert reader.read(10) == b"x" * 10
    with pytest.raises(TooLarge):
        reader.read(5)
    with pytest.raises(TooLarge):
        BoundedReader(io.BytesIO(b"x" * 11), "k", 10).read()


def test_a_large_read_never_pulls_more_than_one_byte_past_the_bound() -> None:
    """A consumer asking for 10 MB of an object bounded at 1,000 bytes: the bound holds."""
    body = io.BytesIO(b"x" * 10_000_000)
    with pytest.raises(TooLarge):
        BoundedReader(body, "k", 1000).read(10_000_000)
    assert body.tell() == 1001


@given(data=st.binary(max_size=300), limit=st.integers(0, 200), sizes=read_sizes)
def test_bounded_reader_reads_at_most_limit_plus_one(data, limit, sizes) -> None:
    body = io.BytesIO(data)
    reader = BoundedReader(body, "k", limit)
    got = b""
    try:
        for n in [*sizes, -1]:
            got += reader.read(n)
    except TooLarge:
        assert len(data) > limit
    else:
        assert got == data and len(data) <= limit
    assert body.tell() <= limit + 1
