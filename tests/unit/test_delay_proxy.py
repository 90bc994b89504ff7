"""The benchmark's loopback delay proxy: it delays each chunk by its own arrival time plus the
delay (so chunks in flight overlap: pipelined, not stop-and-wait), keeps bytes and order, and
holds a new connection's first bytes a round trip longer. Time is a fake clock throughout;
the end-to-end test runs over 127.0.0.1 with no delay and asserts only on bytes."""

from __future__ import annotations

import asyncio
import os

from pytest import approx

from bench.delay_proxy import DelayLine, DelayProxy, drain, feed


class FakeTime:
    """A clock and a sleep that moves it: sleeping is instant, time is what was slept."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedReader:
    """A stream whose every read takes `gap` seconds of fake time."""

    def __init__(self, chunks: list[bytes], t: FakeTime, gap: float) -> None:
        self._chunks, self._t, self._gap = list(chunks), t, gap

    async def read(self, n: int) -> bytes:
        self._t.now += self._gap
        return self._chunks.pop(0) if self._chunks else b""


class Collect:
    """A StreamWriter stand-in that records what was written, and when."""

    def __init__(self, t: FakeTime) -> None:
        self._t = t
        self.writes: list[tuple[float, bytes]] = []
        self.eof = False

    def write(self, data: bytes) -> None:
        self.writes.append((self._t.now, data))

    async def drain(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True


async def test_each_chunk_leaves_its_own_delay_after_it_came_in() -> None:
    t = FakeTime()
    line = DelayLine(0.04, clock=t.clock, sleep=t.sleep)
    for chunk in (b"a", b"b", b"c"):
        line.push(chunk)
        t.now += 0.01
    line.push(None)
    assert line.pending == approx([100.04, 100.05, 100.06, 100.07])
    out = []
    while (chunk := await line.pop()) is not None:
        out.append((t.now, chunk))
    # Released 40 ms after each arrival: three chunks take 60 ms, not 3 x 40 ms.
    assert [b for _, b in out] == [b"a", b"b", b"c"]
    assert [at for at, _ in out] == approx([100.04, 100.05, 100.06])


async def test_a_chunk_already_due_leaves_without_sleeping() -> None:
    t = FakeTime()
    line = DelayLine(0.02, clock=t.clock, sleep=t.sleep)
    line.push(b"x")
    t.now += 1.0
    assert await line.pop() == b"x"
    assert t.slept == []


async def test_the_first_bytes_wait_for_not_before() -> None:
    t = FakeTime()
    line = DelayLine(0.01, clock=t.clock, sleep=t.sleep, not_before=100.03)
    line.push(b"first")
    t.now += 0.05
    line.push(b"later")
    assert line.pending == approx([100.03, 100.06])


async def test_feed_reads_everything_before_anything_is_released() -> None:
    """Pipelined: the reading side never waits on a release, so the whole stream is queued
    while the writing side still waits for the first chunk's time."""
    t = FakeTime()
    line = DelayLine(0.5, clock=t.clock, sleep=t.sleep)
    reader = ScriptedReader([b"one", b"two", b"three"], t, gap=0.001)
    await feed(reader, line)  # type: ignore[arg-type]
    assert line.pending == approx([100.501, 100.502, 100.503, 100.504])
    out = Collect(t)
    await drain(line, out)  # type: ignore[arg-type]
    assert [b for _, b in out.writes] == [b"one", b"two", b"three"]
    assert [at for at, _ in out.writes] == approx([100.501, 100.502, 100.503])
    assert out.eof


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_the_proxy_relays_every_byte_in_order_both_ways_on_each_connection() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = DelayProxy(("127.0.0.1", echo.sockets[0].getsockname()[1]), 0.0)
    port = await proxy.start()

    async def roundtrip(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        back = await reader.read()
        writer.close()
        return back

    try:
        sent = [os.urandom(3 << 20), os.urandom(1000), b""]
        assert await asyncio.gather(*(roundtrip(d) for d in sent)) == sent
    finally:
        await proxy.close()
        echo.close()
        await echo.wait_closed()


async def test_a_connection_to_a_dead_upstream_is_closed() -> None:
    gone = await asyncio.start_server(_echo, "127.0.0.1", 0)
    dead_port = gone.sockets[0].getsockname()[1]
    gone.close()
    await gone.wait_closed()
    proxy = DelayProxy(("127.0.0.1", dead_port), 0.0)
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()
    finally:
        await proxy.close()


async def test_closing_the_proxy_ends_the_open_connections() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = DelayProxy(("127.0.0.1", echo.sockets[0].getsockname()[1]), 0.0)
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        await proxy.close()
        assert await reader.read() == b""
        writer.close()
    finally:
        echo.close()
        await echo.wait_closed()
