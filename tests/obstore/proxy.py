"""A recording, fault-injecting HTTP proxy on 127.0.0.1 in front of the SeaweedFS server.

obstore's requests are made in Rust, out of reach of any Python hook: to see what it sends
(headers after signing, body framing) and to answer as a failing service would, the tests put
this proxy between the store and the server. The Host header is forwarded unchanged, so the
signature the client computed for the proxy's address still verifies upstream.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import attrs

LOOPBACK = "127.0.0.1"


@attrs.frozen
class Seen:
    method: str
    path: str  # with its query string
    headers: dict[str, str]  # lower-case names
    body: bytes  # as it arrived, de-chunked when it came chunked
    chunked: bool


# What a fault hook returns: None forwards the request; (status, headers, body) answers it;
# "drop" closes the connection without an answer; "short" forwards the request and cuts the
# answer's body in half.
Answer = tuple[int, dict[str, str], bytes] | str | None
Fault = Callable[[Seen], Answer]


class Proxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or LOOPBACK, parts.port or 80)
        self.seen: list[Seen] = []
        self.fault: Fault | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, seen: Seen) -> Answer:
        with self._lock:
            self.seen.append(seen)
            fault = self.fault
        return None if fault is None else fault(seen)

    def _forward(self, seen: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            hop = ("transfer-encoding", "connection")
            headers = {k: v for k, v in seen.headers.items() if k not in hop}
            if seen.chunked or seen.body:
                headers["content-length"] = str(len(seen.body))
            conn.request(seen.method, seen.path, body=seen.body or None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, resp.getheaders(), body
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _body(self) -> tuple[bytes, bool]:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass  # trailers
                            return bytes(out), True
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length), False

            def _serve(self) -> None:
                body, chunked = self._body()
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    chunked,
                )
                answer = proxy._record(seen)
                if answer == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(answer, tuple):
                    status, headers, payload = answer
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                status, headers, payload = proxy._forward(seen)
                self.send_response_only(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if answer == "short":
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve

        return Handler
