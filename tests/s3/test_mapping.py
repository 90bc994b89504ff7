"""Error mapping and the body-length guards, without a server (botocore's Stubber)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.response import StreamingBody
from botocore.stub import Stubber

from adapters.storage.s3 import S3Settings, S3StoreOpener
from adapters.storage.s3_errors import Context, is_connection_error, is_vendor_error, map_error
from ports import AccessDenied, Bucket, NotFound, StorageError, TooLarge, TransientStorageError

URL = "http://127.0.0.1:9"


def client_error(code: str, status: int, op: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        op,
    )


def ctx(op: str = "get", key: str | None = "k") -> Context:
    return Context("bkt", URL, "KEYID", op, key)


@pytest.mark.parametrize(
    ("error", "op", "expected", "text"),
    [
        (client_error("NoSuchKey", 404), "get", NotFound, "k"),
        (client_error("404", 404, "HeadObject"), "get_file", NotFound, "k"),
        (client_error("NoSuchBucket", 404), "get", StorageError, "bucket does not exist"),
        (client_error("SignatureDoesNotMatch", 403), "get", AccessDenied, "does not match"),
        (client_error("InvalidAccessKeyId", 403), "get", AccessDenied, "does not know"),
        (client_error("AccessDenied", 403, "PutObject"), "put", AccessDenied, "read-only"),
        (client_error("AccessDenied", 403), "get", AccessDenied, "lack permission"),
        (client_error("403", 403, "HeadObject"), "head", AccessDenied, "HTTP 403"),
        (client_error("SlowDown", 503), "put", TransientStorageError, "SlowDown"),
        (client_error("InternalError", 500), "get", TransientStorageError, "try again"),
        (client_error("TooManyRequests", 429), "get", TransientStorageError, "TooManyRequests"),
        (client_error("Weird", 502), "get", TransientStorageError, "Weird"),
        (client_error("InvalidArgument", 400), "get", StorageError, "InvalidArgument"),
        (EndpointConnectionError(endpoint_url=URL), "get", TransientStorageError, "connection"),
        (ConnectTimeoutError(endpoint_url=URL), "get", TransientStorageError, "connection"),
        (ReadTimeoutError(endpoint_url=URL), "get", TransientStorageError, "connection"),
        (ConnectionClosedError(endpoint_url=URL), "get", TransientStorageError, "connection"),
        (ResponseStreamingError(error="reset"), "get", TransientStorageError, "connection"),
        (
            RetriesExceededError(ReadTimeoutError(endpoint_url=URL)),
            "get_file",
            TransientStorageError,
            "connection",
        ),
        (ParamValidationError(report="bad"), "get", StorageError, "ParamValidationError"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_vendor_errors_map_to_port_errors(
    error: BaseException, op: str, expected: type, text: str
) -> None:
    assert is_vendor_error(error)
    mapped = map_error(error, ctx(op))
    assert type(mapped) is expected
    assert text in str(mapped)
    if expected is not NotFound:
        assert "'bkt/k'" in str(mapped) and "KEYID" in str(mapped)


def test_wrapped_upload_failures_are_unwrapped() -> None:
    try:
        try:
            raise client_error("AccessDenied", 403, "UploadPart")
        except ClientError as inner:
            raise S3UploadFailedError(f"Failed to upload: {inner}")  # noqa: B904 - as boto3 does
    except S3UploadFailedError as outer:
        mapped = map_error(outer, ctx("put_file"))
    assert isinstance(mapped, AccessDenied) and "read-only" in str(mapped)


def test_connection_errors_are_told_apart_and_local_errors_are_not_vendor() -> None:
    assert is_connection_error(EndpointConnectionError(endpoint_url=URL))
    assert not is_connection_error(client_error("SlowDown", 503))
    assert not is_vendor_error(FileNotFoundError("x"))
    assert not is_vendor_error(TooLarge("k", 2, 1))


def _stubbed_store(bodies: list[tuple[bytes, int]]):
    def stub(client) -> None:
        stubber = Stubber(client)
        for data, advertised in bodies:
            stubber.add_response(
                "get_object",
                {
                    "Body": StreamingBody(io.BytesIO(data), advertised),
                    "ContentLength": advertised,
                    "LastModified": datetime(2026, 1, 1, tzinfo=UTC),
                    "ETag": '"e"',
                },
                {"Bucket": "bkt", "Key": "k"},
            )
        stubber.activate()

    opener = S3StoreOpener(S3Settings(max_attempts=1), on_client=stub)
    store = opener.open(Bucket("bkt", "acct", "KEYID", "s3cr3t", endpoint=URL))
    return opener, store


async def test_a_body_longer_than_advertised_is_cut_at_the_limit() -> None:
    opener, store = _stubbed_store([(b"x" * 1000, 10)])
    with pytest.raises(TooLarge) as info:
        await store.get("k", max_bytes=50)
    assert info.value.size == 51  # read max_bytes + 1, never the whole body
    await store.close()
    opener.close()


async def test_a_body_shorter_than_advertised_is_transient() -> None:
    opener, store = _stubbed_store([(b"x" * 5, 10), (b"x" * 5, 10)])
    with pytest.raises(TransientStorageError):
        await store.get("k")
    with pytest.raises(TransientStorageError):
        await store.get("k", max_bytes=100)
    await store.close()
    opener.close()


async def test_a_closed_store_refuses_calls() -> None:
    opener = S3StoreOpener()
    store = opener.open(Bucket("bkt", "acct", "KEYID", "s3cr3t", endpoint=URL))
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await store.head("k")
    opener.close()


def test_settings_validate_and_build_configs() -> None:
    settings = S3Settings(retry_mode="adaptive", max_attempts=3, max_pool_connections=16)
    config = settings.client_config()
    assert config.retries == {"mode": "adaptive", "max_attempts": 3}
    assert config.region_name == "auto" and config.s3 == {"addressing_style": "path"}
    # R2 takes neither boto3 >= 1.36's checksum trailers nor needs its response CRC checks.
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert settings.transfer_config().multipart_chunksize == 8 << 20
    with pytest.raises(ValueError):
        S3Settings(retry_mode="legacy")
    with pytest.raises(ValueError):
        S3Settings(request_checksum_calculation="always")
    with pytest.raises(ValueError):
        S3Settings(multipart_chunksize=1 << 20)  # under S3's 5 MiB part minimum
    with pytest.raises(ValueError):
        S3Settings(max_attempts=0)
