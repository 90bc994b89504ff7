"""Large files around the page cache (O_DIRECT), small ones through it, bytes unchanged."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adapters.storage.direct as direct
from adapters.storage.direct import BLOCK, DirectSink
from adapters.storage.files import write_temp
from adapters.storage.local import LocalStore

SWITCH = 2 * BLOCK  # small, so a test crosses it with a few KiB


def _has_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@st.composite
def cut_payloads(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A payload around the switch and block sizes, cut into random pieces."""
    size = draw(
        st.one_of(
            st.integers(0, 5 * SWITCH),
            st.sampled_from([SWITCH - 1, SWITCH, SWITCH + 1, 3 * SWITCH, 3 * SWITCH + BLOCK]),
        )
    )
    payload = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=6)))
    bounds = [0, *cuts, size]
    return payload, [payload[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=60, deadline=None)
@given(cut_payloads())
def test_a_file_from_the_switch_goes_direct_and_keeps_its_bytes(
    case: tuple[bytes, list[bytes]],
) -> None:
    payload, pieces = case
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        path = Path(tmp) / "f"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with DirectSink(fd, SWITCH) as sink:
                for piece in pieces:
                    sink.write(memoryview(piece))
                assert sink.close() == len(payload)
            went_direct = len(payload) >= SWITCH
            assert sink.direct is went_direct
            assert _has_direct(fd) is went_direct
        finally:
            os.close(fd)
        assert path.read_bytes() == payload


@pytest.mark.parametrize("size", [0, SWITCH - 1, SWITCH, 5 * SWITCH + 17])
def test_a_file_source_is_read_straight_into_the_buffer(tmp_path: Path, size: int) -> None:
    payload = os.urandom(size)
    source = tmp_path / "source"
    source.write_bytes(payload)
    written = write_temp(tmp_path / "out", source=source, direct_bytes=SWITCH)
    assert written.read_bytes() == payload


def test_without_a_switch_every_file_goes_through_the_cache(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with DirectSink(fd, None) as sink:
            sink.write(os.urandom(3 << 20))
            sink.close()
        assert not sink.direct and not _has_direct(fd)
    finally:
        os.close(fd)


def test_a_filesystem_that_refuses_the_alignment_gets_normal_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    refused = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if _has_direct(fd):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    payload = os.urandom(3 * SWITCH + 5)
    path = write_temp(tmp_path, [payload], direct_bytes=SWITCH)
    assert refused == [0]  # tried once, then the rest went through the cache
    assert path.read_bytes() == payload


def test_other_write_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    with pytest.raises(OSError, match="No space"):
        write_temp(tmp_path, [os.urandom(3 * SWITCH)], direct_bytes=SWITCH)
    assert list(tmp_path.iterdir()) == []  # the temp file went with the error


def test_buffers_are_reused_and_never_shared_by_two_open_files(tmp_path: Path) -> None:
    fds = [os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT, 0o600) for name in "abc"]
    try:
        with DirectSink(fds[0], SWITCH) as first:
            buffer = first._buf
            first.close()
        # Two files open at once, written in turns by one thread: each keeps its own bytes.
        with DirectSink(fds[1], SWITCH) as second, DirectSink(fds[2], SWITCH) as third:
            assert second._buf is buffer and third._buf is not buffer
            for _ in range(5):
                second.write(b"b" * 3000)
                third.write(b"c" * 3000)
            second.close()
            third.close()
    finally:
        for fd in fds:
            os.close(fd)
    assert (tmp_path / "b").read_bytes() == b"b" * 15000
    assert (tmp_path / "c").read_bytes() == b"c" * 15000


@pytest.mark.parametrize("bad", [0, -BLOCK, 1000, BLOCK + 1])
def test_the_switch_must_be_a_whole_number_of_blocks(bad: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4096"):
        DirectSink(0, bad)


async def test_the_local_store_writes_its_large_objects_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[int, bool] = {}
    real = DirectSink.close

    def close(self: DirectSink) -> int:
        size = real(self)
        seen[size] = self.direct
        return size

    monkeypatch.setattr(DirectSink, "close", close)
    store = LocalStore(tmp_path / "bucket", direct_bytes=SWITCH)
    source = tmp_path / "source"
    source.write_bytes(os.urandom(4 * SWITCH))
    await store.put("small", b"x" * 100)
    await store.put_file("large", str(source))
    await store.put_stream("streamed", iter([memoryview(b"y" * SWITCH)]))
    assert seen == {100: False, 4 * SWITCH: True, SWITCH: True}
    assert (await store.get("large")).data == source.read_bytes()
    off = LocalStore(tmp_path / "off", direct_bytes=None)
    seen.clear()
    await off.put_file("large", str(source))
    assert seen == {4 * SWITCH: False}


@pytest.mark.parametrize("switch", [None, SWITCH])
def test_a_file_source_then_chunks_keep_their_order(tmp_path: Path, switch: int | None) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    source = tmp_path / "source"
    source.write_bytes(b"s" * 5000)
    try:
        with DirectSink(fd, switch) as sink, open(source, "rb", buffering=0) as fh:
            sink.write_from(fh)
            sink.write(b"c" * 7000)
            sink.close()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"s" * 5000 + b"c" * 7000


async def test_a_switch_of_zero_turns_direct_writes_off(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket", direct_bytes=0)  # the setting's "off"
    await store.put("large", b"z" * (3 * SWITCH))
    assert (await store.get("large")).data == b"z" * (3 * SWITCH)
