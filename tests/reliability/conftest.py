"""Fixtures of the reliability suite: a SeaweedFS of its own (tests here kill it) and a
byte-level TCP proxy on loopback that resets or cuts connections to it."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from tests.s3.server import LOOPBACK, SeaweedServer
from tests.s3.server import private_server as start_private_server


@pytest.fixture(scope="module")
def private_server() -> Iterator[SeaweedServer]:
    """Killed, frozen and restarted by the tests, so never the session's shared server."""
    with start_private_server() as server:
        yield server


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a crashed middlebox or server would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # shutdown acts at once even while the other pump thread is blocked reading this socket
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class FaultyProxy:
    """Forwards 127.0.0.1:<port> to `upstream`. `mode` (read when a connection opens):

    pass      every byte both ways;
    reset     the request is read, then the connection is reset (no answer at all);
    truncate  the answer is cut after `cut_after` bytes and the connection reset.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.cut_after = 0
        self.connections = 0
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client, self.mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        if mode == "reset":
            with contextlib.suppress(OSError):
                client.recv(65536)
            _reset(client)
            return
        try:
            upstream = socket.create_connection((LOOPBACK, self.upstream_port))
        except OSError:
            _reset(client)
            return
        limit = self.cut_after if mode == "truncate" else None
        threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
        self._pump(upstream, client, limit)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(limit - sent, 0)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _reset(dst)
            _reset(src)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@pytest.fixture
def proxy(private_server: SeaweedServer) -> Iterator[FaultyProxy]:
    made = FaultyProxy(private_server.ports["s3.port"])
    yield made
    made.close()
