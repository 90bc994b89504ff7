"""A TCP proxy on 127.0.0.1 that adds a link's latency: every chunk leaves `delay` seconds
after it came in, in each direction, however many chunks are on the way.

The kernel here has no `netem`, so the shaped-network benchmark (bench/shaped.py) puts this
proxy in front of the SeaweedFS server and shapes the rate with `tc` on the proxy's port. A
proxy that waited `delay` per chunk before reading the next would be stop-and-wait, capping
throughput at a chunk per delay; here the reading side stamps each chunk with its release
time and queues it, and the writing side releases chunks in order as their time comes, so
the queue holds a bandwidth-delay product's worth of data, as a real link does. The queue is
not bounded: behind a shaped client leg, an answer waits here instead of in the server's
socket buffers, which changes where the bytes wait, not when they arrive.

The proxy ends TCP on both sides, so the client's TCP sees no latency of its own: windows are
open from the start and nothing is lost (no slow start, no loss recovery). A new connection's
handshake is emulated by holding its first request bytes a round trip (2 x `delay`) longer.

    python -m bench.delay_proxy --upstream 127.0.0.1:PORT --delay-ms 10

prints the port it listens on, then serves until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

LOOPBACK = "127.0.0.1"
CHUNK = 256 << 10

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


class DelayLine:
    """One direction of one connection: chunks (None for end of stream) in, the same chunks
    out in order, each no earlier than `delay` after it was pushed (nor than `not_before`)."""

    def __init__(
        self,
        delay: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        not_before: float = 0.0,
    ) -> None:
        self._delay = delay
        self._clock = clock
        self._sleep = sleep
        self._not_before = not_before
        self._queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    def push(self, chunk: bytes | None) -> None:
        due = max(self._clock() + self._delay, self._not_before)
        self._queue.put_nowait((due, chunk))

    @property
    def pending(self) -> list[float]:
        """Release times of the chunks still queued, oldest first."""
        return [due for due, _ in self._queue._queue]  # type: ignore[attr-defined]

    async def pop(self) -> bytes | None:
        due, chunk = await self._queue.get()
        wait = due - self._clock()
        if wait > 0:
            await self._sleep(wait)
        return chunk


async def feed(reader: asyncio.StreamReader, line: DelayLine) -> None:
    """Read until end of stream, queueing every chunk at once: never waits for a release."""
    while chunk := await reader.read(CHUNK):
        line.push(chunk)
    line.push(None)


async def drain(line: DelayLine, writer: asyncio.StreamWriter) -> None:
    """Write chunks as they are released; pass the end of stream on."""
    while (chunk := await line.pop()) is not None:
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


class DelayProxy:
    """Listens on 127.0.0.1 and relays each connection to `upstream` through two DelayLines."""

    def __init__(
        self,
        upstream: tuple[str, int],
        delay: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.upstream = upstream
        self.delay = delay
        self._clock = clock
        self._sleep = sleep
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, port)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
            for task in self._connections:
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    def _line(self, not_before: float = 0.0) -> DelayLine:
        return DelayLine(self.delay, clock=self._clock, sleep=self._sleep, not_before=not_before)

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        # The client's first bytes would leave a round trip after it sent its SYN: the
        # handshake, then the one-way delay every chunk gets.
        up = self._line(not_before=self._clock() + 3 * self.delay)
        down = self._line()
        me = asyncio.current_task()
        assert me is not None
        self._connections.add(me)
        me.add_done_callback(self._connections.discard)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        tasks = [
            asyncio.ensure_future(feed(c_reader, up)),
            asyncio.ensure_future(drain(up, s_writer)),
            asyncio.ensure_future(feed(s_reader, down)),
            asyncio.ensure_future(drain(down, c_writer)),
        ]
        try:
            # Each side's end of stream is passed on; a reset anywhere ends both.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            pass  # `close`: the server's callback would log a cancelled handler as an error
        finally:
            for t in tasks:
                t.cancel()
            for w in (c_writer, s_writer):
                w.close()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _main(upstream: tuple[str, int], delay: float, port: int) -> None:
    proxy = DelayProxy(upstream, delay)
    stop = asyncio.Event()
    # Terminated, it returns: asyncio.run then cancels the open connections' tasks in order.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(await proxy.start(port), flush=True)
    await stop.wait()
    await proxy.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(_main((host, int(port)), args.delay_ms / 1e3, args.port))


if __name__ == "__main__":
    main()
