"""What the S3 adapter sends to an https endpoint, captured after signing (no server, no network).

boto3 >= 1.36 sends PutObject and UploadPart over https as aws-chunked bodies with a checksum
trailer unless told otherwise, a form R2 refuses; over plain http (SeaweedFS in the other
tests) it signs the body instead, so only an https endpoint shows the difference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from adapters.storage.s3 import S3Settings, S3Store, S3StoreOpener
from ports import AccessDenied, Bucket, StorageError, TransientStorageError
from tests.s3.wire import HTTPS_ENDPOINT, Wire

MiB = 1 << 20
# Multipart from 5 MiB in 5 MiB parts (S3's smallest): 11 MiB makes three parts.
SMALL_PARTS = {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}
BIG = bytes(range(256)) * (11 * MiB // 256)
TRAILER_OPS = {"PutObject", "UploadPart"}


def _open(wire: Wire, **settings: object) -> tuple[S3StoreOpener, S3Store]:
    opener = S3StoreOpener(S3Settings(max_attempts=3, **settings), on_client=wire.attach)
    bucket = Bucket("r2-bucket", "acct", "KEYID", "s3cr3t", endpoint=HTTPS_ENDPOINT)
    return opener, opener.open(bucket)


def _chunks(data: bytes, size: int = 3 * MiB):
    for start in range(0, len(data), size):
        yield data[start : start + size]


Write = Callable[[S3Store, Path], Awaitable[object]]


async def _put_file(store: S3Store, tmp: Path, data: bytes = BIG) -> object:
    path = tmp / "upload.bin"
    path.write_bytes(data)
    return await store.put_file("file", str(path))


WRITES: dict[str, tuple[Write, set[str]]] = {
    "put below the threshold": (lambda s, _: s.put("small", b"x" * 1000), {"PutObject"}),
    "put above it": (lambda s, _: s.put("big", BIG), {"UploadPart", "CompleteMultipartUpload"}),
    "put_file": (_put_file, {"UploadPart", "CompleteMultipartUpload"}),
    "small put_file": (lambda s, tmp: _put_file(s, tmp, b"z" * 1000), {"PutObject"}),
    "put_stream": (lambda s, _: s.put_stream("stream", _chunks(BIG)), {"UploadPart"}),
    "small put_stream": (lambda s, _: s.put_stream("tiny", _chunks(b"y" * 100)), {"PutObject"}),
    "delete": (lambda s, _: s.delete(["small", "big"]), {"DeleteObjects"}),
}


@pytest.fixture
async def default_store() -> AsyncIterator[tuple[Wire, S3Store]]:
    wire = Wire()
    opener, store = _open(wire, **SMALL_PARTS)
    yield wire, store
    await store.close()
    opener.close()


@pytest.mark.parametrize("name", list(WRITES))
async def test_no_write_to_an_https_endpoint_carries_a_checksum_trailer(
    name: str, default_store: tuple[Wire, S3Store], tmp_path: Path
) -> None:
    wire, store = default_store
    write, expected_ops = WRITES[name]
    await write(store, tmp_path)
    assert expected_ops <= set(wire.ops()), wire.ops()
    for seen in wire.seen:
        h = seen.headers
        assert "aws-chunked" not in h.get("content-encoding", ""), seen
        assert "x-amz-trailer" not in h, seen
        assert not h["x-amz-content-sha256"].startswith("STREAMING-"), seen
        if seen.operation in TRAILER_OPS | {"DeleteObjects"}:
            # The integrity check each write keeps, of the very bytes sent.
            assert h["content-md5"] == seen.body_md5, seen
        if seen.operation in TRAILER_OPS:
            # The MD5 stands in for the payload hash, as with boto3 < 1.36 over https.
            assert h["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD", seen
        if seen.operation == "DeleteObjects":
            # botocore's checksum on this checksum-required operation: a plain header.
            assert "x-amz-checksum-crc32" in h, seen


async def test_what_was_written_arrives_whole(default_store: tuple[Wire, S3Store]) -> None:
    wire, store = default_store
    meta = await store.put("big", BIG)
    assert wire.objects["big"] == BIG and meta.size == len(BIG)
    assert wire.ops().count("UploadPart") == 3


@pytest.mark.parametrize("name", ["put above it", "put_file", "small put_file"])
async def test_hashing_the_body_reports_no_progress_twice(name: str, tmp_path: Path) -> None:
    """The MD5 reads each body before it is sent; s3transfer's progress must count it once."""
    done: list[int] = []
    wire = Wire()
    opener = S3StoreOpener(
        S3Settings(**SMALL_PARTS), progress=lambda _key, n: done.append(n), on_client=wire.attach
    )
    store = opener.open(Bucket("r2-bucket", "acct", "KEYID", "s3cr3t", endpoint=HTTPS_ENDPOINT))
    meta = await WRITES[name][0](store, tmp_path)
    assert sum(done) == meta.size and all(n >= 0 for n in done)
    await store.close()
    opener.close()


@pytest.mark.parametrize("name", ["put below the threshold", "put above it"])
async def test_when_supported_sends_the_trailers_r2_refuses(name: str, tmp_path: Path) -> None:
    """The same writes with boto3's own default: the form the setting exists to avoid (this is
    what every test above would see without it)."""
    wire = Wire()
    opener, store = _open(wire, request_checksum_calculation="when_supported", **SMALL_PARTS)
    await WRITES[name][0](store, tmp_path)
    bodies = [s for s in wire.seen if s.operation in TRAILER_OPS]
    assert bodies
    for seen in bodies:
        h = seen.headers
        assert h["content-encoding"] == "aws-chunked"
        assert h["x-amz-trailer"] == "x-amz-checksum-crc32"
        assert h["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        assert "content-md5" not in h
    await store.close()
    opener.close()


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
@pytest.mark.parametrize(("data", "refused"), [(b"v2", "PutObject"), (BIG, "UploadPart")])
async def test_a_refused_request_form_is_one_clear_error_and_loses_nothing(
    checksums: str, data: bytes, refused: str
) -> None:
    wire = Wire()
    opener, store = _open(wire, request_checksum_calculation=checksums, **SMALL_PARTS)
    await store.put("k", b"v1")
    wire.refuse.add(refused)
    before = len(wire.seen)

    with pytest.raises(StorageError) as info:
        await store.put("k", data)

    assert not isinstance(info.value, TransientStorageError)  # the same request fails again
    message = str(info.value)
    assert "'r2-bucket/k'" in message and message.startswith("put ")
    assert "not implemented" in message and "request_checksum_calculation" in message
    if checksums == "when_supported":
        assert "set request_checksum_calculation = 'when_required'" in message
    tried = [s.operation for s in wire.seen[before:]]
    attempts = [s.part for s in wire.seen[before:] if s.operation == refused]
    assert attempts and len(attempts) == len(set(attempts))  # no request retried
    assert "CompleteMultipartUpload" not in tried
    if refused == "UploadPart":
        assert "AbortMultipartUpload" in tried  # no parts left behind
    assert wire.objects["k"] == b"v1"  # what was stored is still there
    await store.close()
    opener.close()


async def test_r2s_unauthorized_answer_to_a_trailer_names_the_setting() -> None:
    from botocore.exceptions import ClientError

    from adapters.storage.s3_errors import Context, map_error

    error = ClientError(
        {"Error": {"Code": "Unauthorized"}, "ResponseMetadata": {"HTTPStatusCode": 401}},
        "PutObject",
    )
    ctx = Context("b", HTTPS_ENDPOINT, "KEYID", "put", "k", checksums="when_supported")
    mapped = map_error(error, ctx)
    assert isinstance(mapped, AccessDenied)
    assert "request_checksum_calculation = 'when_required'" in str(mapped)
