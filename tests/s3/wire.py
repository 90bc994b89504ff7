"""A boto3 client's signed requests, answered at botocore's `before-send` event.

`Wire.attach` goes into `S3StoreOpener(on_client=...)`: every request the store's client signs
is recorded as it would go out (headers after signing) and answered here by a small
in-memory S3, so a store on an https endpoint on loopback runs without a server and without
a byte on the network. `refuse` names operations answered as R2 answers a request form it does
not implement (501 NotImplemented); while `down` is set every request fails as a refused
connection does.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError

HTTPS_ENDPOINT = "https://127.0.0.1:9"  # loopback, a closed port: nothing may connect there
REFUSAL = b"Header 'x-amz-checksum-crc32' with value 'AAAAAA==' not implemented"


@attrs.frozen
class Seen:
    operation: str
    method: str
    key: str
    headers: dict[str, str]  # lower-case names
    body_md5: str  # base64, of the bytes the request would send
    part: int | None = None


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


def _xml(tag: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><{tag}>{inner}</{tag}>'.encode()


def _read(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return body.read()


def _unchunk(body: bytes) -> bytes:
    """The payload of an aws-chunked body (`size-hex CRLF data CRLF` ..., `0`, trailers)."""
    out, at = bytearray(), 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2 : end + 2 + size]
        at = end + 2 + size + 2


class Wire:
    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.refuse = set(refuse)
        self.down = False
        self.seen: list[Seen] = []
        self.objects: dict[str, bytes] = {}
        self._parts: dict[str, dict[int, bytes]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-send.s3", self._send)

    def ops(self) -> list[str]:
        with self._lock:
            return [s.operation for s in self.seen]

    def _send(self, request: Any, event_name: str, **_: Any) -> AWSResponse:
        if self.down:
            raise EndpointConnectionError(endpoint_url=request.url)
        operation = event_name.rsplit(".", 1)[-1]
        url = urlsplit(request.url)
        key = unquote(url.path).split("/", 2)[-1]
        query = parse_qs(url.query, keep_blank_values=True)
        headers = {
            k.lower(): (v.decode() if isinstance(v, bytes) else v)
            for k, v in request.headers.items()
        }
        body = _read(request.body)
        if "aws-chunked" in headers.get("content-encoding", ""):
            body = _unchunk(body)
        with self._lock:
            self.seen.append(
                Seen(
                    operation,
                    request.method,
                    key,
                    headers,
                    base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
                    int(query["partNumber"][0]) if "partNumber" in query else None,
                )
            )
            if operation in self.refuse:
                return self._answer(
                    request,
                    501,
                    _xml(
                        "Error", f"<Code>NotImplemented</Code><Message>{REFUSAL.decode()}</Message>"
                    ),
                )
            return self._serve(request, operation, key, query, body)

    def _answer(self, request: Any, status: int, body: bytes = b"", **headers: str) -> AWSResponse:
        headers = {"Content-Length": str(len(body)), **headers}
        if body:
            headers["Content-Type"] = "application/xml"
        return AWSResponse(request.url, status, headers, _Raw(body))

    def _serve(
        self, request: Any, op: str, key: str, query: dict[str, list[str]], body: bytes
    ) -> AWSResponse:
        def etag(data: bytes) -> str:
            return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'

        if op == "PutObject":
            self.objects[key] = body
            return self._answer(request, 200, ETag=etag(body))
        if op == "HeadObject":
            if key not in self.objects:
                return self._answer(request, 404)
            data = self.objects[key]
            return AWSResponse(
                request.url,
                200,
                {
                    "Content-Length": str(len(data)),
                    "ETag": etag(data),
                    "Last-Modified": "Mon, 30 Nov 2026 12:00:00 GMT",
                },
                _Raw(b""),
            )
        if op == "CreateMultipartUpload":
            upload = str(next(self._ids))
            self._parts[upload] = {}
            return self._answer(
                request,
                200,
                _xml(
                    "InitiateMultipartUploadResult",
                    f"<Bucket>b</Bucket><Key>{key}</Key><UploadId>{upload}</UploadId>",
                ),
            )
        if op == "UploadPart":
            self._parts[query["uploadId"][0]][int(query["partNumber"][0])] = body
            return self._answer(request, 200, ETag=etag(body))
        if op == "CompleteMultipartUpload":
            parts = self._parts.pop(query["uploadId"][0])
            self.objects[key] = b"".join(parts[n] for n in sorted(parts))
            return self._answer(
                request,
                200,
                _xml(
                    "CompleteMultipartUploadResult",
                    f"<Key>{key}</Key><ETag>{etag(self.objects[key])}</ETag>",
                ),
            )
        if op == "AbortMultipartUpload":
            self._parts.pop(query["uploadId"][0], None)
            return self._answer(request, 204)
        if op == "DeleteObjects":
            return self._answer(request, 200, _xml("DeleteResult", ""))
        raise AssertionError(f"the wire has no answer for {op}")
