"""The ObjectStore contract: what every storage adapter must do, run against each of them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import BinaryIO

import pytest

from ports import InvalidKey, NotFound, ObjectMeta, TooLarge
from tests.contract.conftest import StoreCase


async def collect(case: StoreCase, prefix: str = "") -> list[ObjectMeta]:
    return [meta async for meta in case.store.list(prefix)]


async def test_put_then_get_returns_the_bytes_and_matching_metadata(case: StoreCase) -> None:
    meta = await case.store.put("a/b.bin", b"hello")
    assert (meta.key, meta.size) == ("a/b.bin", 5)
    blob = await case.store.get("a/b.bin")
    assert blob.data == b"hello"
    head = await case.store.head("a/b.bin")
    assert head is not None
    assert (head.key, head.size, head.etag) == (blob.meta.key, blob.meta.size, blob.meta.etag)
    assert head.last_modified == blob.meta.last_modified


async def test_put_accepts_bytearray_memoryview_and_empty(case: StoreCase) -> None:
    await case.store.put("ba", bytearray(b"xyz"))
    await case.store.put("mv", memoryview(b"0123456789")[2:5])
    await case.store.put("empty", b"")
    assert (await case.store.get("ba")).data == b"xyz"
    assert (await case.store.get("mv")).data == b"234"
    empty = await case.store.get("empty")
    assert empty.data == b"" and empty.meta.size == 0


async def test_overwrite_replaces_the_whole_value(case: StoreCase) -> None:
    await case.store.put("k", b"x" * 1000)
    await case.store.put("k", b"short")
    assert (await case.store.get("k")).data == b"short"
    assert (await case.store.head("k")).size == 5


async def test_missing_keys(case: StoreCase, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        await case.store.get("nope")
    assert await case.store.head("nope") is None
    dest = tmp_path / "dest.bin"
    with pytest.raises(NotFound):
        await case.store.get_file("nope", str(dest))
    assert not dest.exists()
    await case.store.delete(["nope", "also/nope"])  # not an error


async def test_max_bytes_is_enforced_for_get_and_get_file(case: StoreCase, tmp_path: Path) -> None:
    await case.store.put("big", b"z" * 100)
    assert len((await case.store.get("big", max_bytes=100)).data) == 100
    with pytest.raises(TooLarge) as info:
        await case.store.get("big", max_bytes=99)
    assert (info.value.size, info.value.limit) == (100, 99)
    dest = tmp_path / "big.bin"
    with pytest.raises(TooLarge):
        await case.store.get_file("big", str(dest), max_bytes=10)
    assert not dest.exists()


async def test_list_filters_by_prefix_in_key_order(case: StoreCase) -> None:
    keys = [
        "gradient-2-1-v1.safetensors",
        "gradient-10-3-v1.safetensors",
        "peers-2-v1.json",
        "checkpoints/v1/5-0/manifest.json",
        "checkpoints/v1/5-0/model.safetensors",
        "checkpoints/v1/6-0/manifest.json",
    ]
    for key in keys:
        await case.store.put(key, key.encode())
    assert [m.key for m in await collect(case)] == sorted(keys)
    assert [m.key for m in await collect(case, "gradient-")] == sorted(keys[:2])
    assert [m.key for m in await collect(case, "checkpoints/v1/5-")] == sorted(keys[3:5])
    assert [m.key for m in await collect(case, "checkpoints/v1/5-0/ma")] == [keys[3]]
    assert await collect(case, "nothing-here") == []
    listed = {m.key: m for m in await collect(case)}
    assert listed["peers-2-v1.json"].size == len(b"peers-2-v1.json")


async def test_delete_removes_only_the_given_keys(case: StoreCase) -> None:
    for key in ("d/1", "d/2", "d/3", "keep"):
        await case.store.put(key, b".")
    await case.store.delete(["d/1", "d/3"])
    assert [m.key for m in await collect(case)] == ["d/2", "keep"]
    await case.store.delete(iter(["d/2"]))
    assert [m.key for m in await collect(case)] == ["keep"]
    await case.store.put("d/4", b"again")  # the prefix is usable after it was emptied
    assert (await case.store.get("d/4")).data == b"again"


async def test_last_modified_is_tz_aware_and_never_goes_backwards(case: StoreCase) -> None:
    stamps = []
    for i in range(5):
        meta = await case.store.put(f"t/{i}", b"x")
        stamps.append(meta)
        await case.tick()
    for meta in stamps:
        assert meta.last_modified.tzinfo is not None
        assert meta.last_modified.utcoffset() == timedelta(0)
        head = await case.store.head(meta.key)
        assert head.last_modified == meta.last_modified
    times = [m.last_modified for m in stamps]
    assert times == sorted(times)
    assert times[-1] > times[0]
    assert times[0].astimezone(UTC) == times[0]


async def test_server_time_is_the_clock_that_stamps_the_objects(case: StoreCase) -> None:
    before = await case.store.server_time()
    meta = await case.store.put("clock/probe", b"x")
    await case.tick()
    after = await case.store.server_time()
    assert before.utcoffset() == timedelta(0) and after.utcoffset() == timedelta(0)
    # Whole seconds on S3: a stamp may read up to a second before the moment it stands for.
    second = timedelta(seconds=1)
    assert before - second <= meta.last_modified <= after + second
    assert after > before - second


async def test_large_object_round_trip_through_files(case: StoreCase, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(1 << 20) * 9  # 9 MiB, over the 8 MiB multipart threshold
    src.write_bytes(payload)
    meta = await case.store.put_file("large/obj", str(src))
    assert meta.size == len(payload)
    dest = tmp_path / "out" / "dest.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old contents")
    got = await case.store.get_file("large/obj", str(dest), max_bytes=len(payload))
    assert got.size == len(payload)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest.bin"]  # no temp left
    with pytest.raises(FileNotFoundError):
        await case.store.put_file("large/none", str(tmp_path / "missing.bin"))


def uneven_chunks(payload: bytes) -> list[bytes | bytearray | memoryview]:
    """`payload` cut at uneven places, as bytes, bytearrays and memoryviews (one empty)."""
    cuts = [0, 1, 4096, 3 << 20, (3 << 20) + 7, len(payload) - 1, len(payload)]
    kinds = [bytes, bytearray, memoryview]
    out: list[bytes | bytearray | memoryview] = [b""]
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        out.append(kinds[i % 3](payload[a:b]))
    return out


async def test_put_stream_stores_what_the_chunks_yield(case: StoreCase) -> None:
    payload = os.urandom(1 << 20) * 9 + b"tail"  # over the 8 MiB multipart threshold
    meta = await case.store.put_stream("streamed/big", uneven_chunks(payload))
    assert meta.size == len(payload)
    blob = await case.store.get("streamed/big")
    assert hashlib.sha256(blob.data).digest() == hashlib.sha256(payload).digest()
    small = await case.store.put_stream("streamed/small", iter([b"ab", memoryview(b"cd")]))
    assert small.size == 4 and (await case.store.get("streamed/small")).data == b"abcd"
    empty = await case.store.put_stream("streamed/empty", iter(()))
    assert empty.size == 0 and (await case.store.get("streamed/empty")).data == b""


class Broken(Exception):
    pass


@pytest.mark.parametrize("size", [1 << 10, 12 << 20])
async def test_a_failing_stream_stores_nothing_and_keeps_the_old_object(
    case: StoreCase, size: int
) -> None:
    await case.store.put("streamed/kept", b"old value")

    def failing() -> Iterator[bytes]:
        yield os.urandom(size)
        raise Broken("the producer failed")

    for key in ("streamed/kept", "streamed/new"):
        with pytest.raises(Broken):
            await case.store.put_stream(key, failing())
    assert (await case.store.get("streamed/kept")).data == b"old value"
    assert await case.store.head("streamed/new") is None
    assert [m.key for m in await collect(case, "streamed/")] == ["streamed/kept"]


async def test_get_stream_hands_the_object_to_the_consumer(case: StoreCase) -> None:
    payload = os.urandom(1 << 20) * 9 + b"tail"
    await case.store.put_stream("streamed/read", uneven_chunks(payload))

    def consume(fh: BinaryIO) -> tuple[bytes, bytes, bytes, bytes]:
        head = fh.read(8)  # exact sizes, however the body arrives
        middle = bytearray(5 << 20)
        assert fh.readinto(middle) == len(middle)
        rest = fh.read(len(payload))  # asks for more than is left: gets the rest
        return head, bytes(middle), rest, fh.read(1)

    head, middle, rest, after = await case.store.get_stream(
        "streamed/read", consume, max_bytes=len(payload)
    )
    assert head + middle + rest == payload and after == b""


async def test_get_stream_refuses_before_calling_the_consumer(case: StoreCase) -> None:
    await case.store.put("streamed/small", b"0123456789")
    called = []
    with pytest.raises(NotFound):
        await case.store.get_stream("streamed/none", called.append)
    with pytest.raises(TooLarge):
        await case.store.get_stream("streamed/small", called.append, max_bytes=9)
    assert called == []

    def failing(fh: BinaryIO) -> None:
        fh.read(3)
        raise Broken("the consumer failed")

    with pytest.raises(Broken):
        await case.store.get_stream("streamed/small", failing)
    assert await case.store.get_stream("streamed/small", lambda fh: fh.read()) == b"0123456789"


async def test_concurrent_puts_of_one_key_leave_one_whole_value(case: StoreCase) -> None:
    size = 256 * 1024
    values = [bytes([i]) * size for i in range(16)]
    seen: list[bytes] = []
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            with contextlib.suppress(NotFound):
                seen.append((await case.store.get("race")).data)
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader()) for _ in range(2)]
    await asyncio.gather(*(case.store.put("race", v) for v in values))
    stop.set()
    await asyncio.gather(*readers)
    final = (await case.store.get("race")).data
    assert final in values
    for data in seen:
        assert data in values, "a reader saw a torn value"
    assert (await case.store.head("race")).size == size
    assert [m.key for m in await collect(case)] == ["race"]


HOSTILE = [
    "../escape",
    "a/../../escape",
    "/etc/passwd",
    "a\x00b",
    "",
    "a//b",
    "./a",
    "a/.",
    "a\\..\\b",
    "line\nbreak",
    "x" * 1100,
    "..",
    "a/..",
]


@pytest.mark.parametrize("key", HOSTILE, ids=repr)
async def test_hostile_keys_are_rejected_everywhere(
    case: StoreCase, key: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidKey):
        await case.store.put(key, b"evil")
    with pytest.raises(InvalidKey):
        await case.store.get(key)
    with pytest.raises(InvalidKey):
        await case.store.head(key)
    with pytest.raises(InvalidKey):
        await case.store.delete([key])
    with pytest.raises(InvalidKey):
        await case.store.get_file(key, str(tmp_path / "x"))
    assert await collect(case) == []
    assert not (tmp_path / "escape").exists()


async def test_unicode_keys_round_trip(case: StoreCase) -> None:
    await case.store.put("ünïcode/ключ-✓", b"1")
    assert [m.key for m in await collect(case)] == ["ünïcode/ключ-✓"]
    assert (await case.store.get("ünïcode/ключ-✓")).data == b"1"
