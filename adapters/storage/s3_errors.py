"""Translate boto3 / botocore / s3transfer failures into the storage port's errors.

Messages name the bucket, endpoint and access key id so an operator can tell which
credentials failed, and never the secret: botocore's own messages do not carry it, and ours
are built only from the fields listed here.
"""

from __future__ import annotations

import attrs
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
)

from ports import AccessDenied, NotFound, StorageError, TransientStorageError

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_BAD_SECRET = frozenset({"SignatureDoesNotMatch"})
_UNKNOWN_KEY = frozenset({"InvalidAccessKeyId", "InvalidToken", "ExpiredToken"})
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "PreconditionFailed",  # the object changed under a download; reading again may succeed
        "BadDigest",  # the body arrived unlike its Content-MD5: nothing stored; send it again
        "412",
    }
)
WRITE_OPS = frozenset({"put", "put_file", "put_stream", "delete"})
# What an endpoint answers to a request form it does not implement (R2: a checksum header or
# the aws-chunked trailer form boto3 >= 1.36 sends by default over https).
_REFUSED_FORM = frozenset({"NotImplemented"})


@attrs.frozen
class Context:
    """What an error message may say about the failing call (no secret here, by design)."""

    bucket: str
    endpoint: str
    access_key_id: str
    op: str
    key: str | None = None
    # The client's request_checksum_calculation, named when an endpoint refuses a request form.
    checksums: str | None = None

    def where(self) -> str:
        target = f"{self.bucket}/{self.key}" if self.key is not None else self.bucket
        return f"{self.op} {target!r} at {self.endpoint} with access key id {self.access_key_id!r}"


def _root(exc: BaseException) -> BaseException:
    """The botocore error beneath s3transfer's and boto3's wrappers, if there is one."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ClientError | BotoCoreError | StorageError):
            return exc
        inner = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
        if inner is None:
            return exc
        exc = inner
    return exc


def is_vendor_error(exc: BaseException) -> bool:
    """True for errors raised by the S3 client stack, which must be mapped; others (a missing
    local file, a full disk, a bug) keep their own type."""
    vendor = type(_root(exc)).__module__.split(".")[0]
    return vendor in {"botocore", "boto3", "s3transfer", "urllib3"}


def is_connection_error(exc: BaseException) -> bool:
    """True when the connection itself failed, so the client's pool should be thrown away."""
    return isinstance(_root(exc), ConnectionError | HTTPClientError | IncompleteReadError)


def client_error_code(exc: BaseException) -> tuple[str, int]:
    root = _root(exc)
    if not isinstance(root, ClientError):
        return "", 0
    code = str(root.response.get("Error", {}).get("Code", ""))
    status = int(root.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def denied(code: str, ctx: Context) -> AccessDenied:
    if code in _BAD_SECRET:
        why = "the secret access key does not match the access key id (SignatureDoesNotMatch)"
    elif code in _UNKNOWN_KEY:
        why = f"the endpoint does not know this access key id ({code})"
    elif code in ("", "403"):
        # A HEAD answer has no body, hence no reason: say every cause it may have.
        why = (
            "access denied (HTTP 403): the secret may not match the access key id, or the key "
            "may lack permission on this bucket"
            + (" (read-only credentials cannot write)" if ctx.op in WRITE_OPS else "")
        )
    elif ctx.op in WRITE_OPS:
        why = (
            f"access denied ({code}); these credentials may be read-only - "
            "writes need the bucket's WRITE access key"
        )
    else:
        why = f"access denied ({code}); the key may lack permission on this bucket"
    return AccessDenied(f"{ctx.where()}: {why}")


def refused_form(code: str, status: int, message: str, ctx: Context) -> StorageError:
    """Not transient: the same request would be refused again. It changed nothing (a refused
    part aborts its multipart upload, so the key keeps its previous object)."""
    said = f"{code or status}" + (f": {message}" if message else "")
    if ctx.checksums == "when_supported":
        fix = (
            "request_checksum_calculation is 'when_supported', which over https sends each "
            "write as aws-chunked with a checksum trailer; set request_checksum_calculation = "
            "'when_required' (the default; TEMPLAR_S3_REQUEST_CHECKSUM_CALCULATION)"
        )
    else:
        fix = (
            "the request carried no checksum trailer (request_checksum_calculation = "
            f"{ctx.checksums!r}): the endpoint does not implement the header it names, and no "
            "setting of this adapter leaves that header out"
        )
    return StorageError(
        f"{ctx.where()}: the endpoint refused the form of the request ({said}); the request "
        f"changed nothing. {fix}"
    )


def map_error(exc: BaseException, ctx: Context) -> StorageError:
    """The port error for `exc`; the caller raises it `from exc`."""
    if isinstance(exc, StorageError):
        return exc
    root = _root(exc)
    if isinstance(root, ClientError):
        code, status = client_error_code(root)
        if code == "NoSuchBucket":
            return StorageError(f"{ctx.where()}: the bucket does not exist")
        if code in _NOT_FOUND or (status == 404 and ctx.key is not None):
            return NotFound(ctx.key or "")
        if code in _REFUSED_FORM or status == 501:
            message = str(root.response.get("Error", {}).get("Message", ""))
            return refused_form(code, status, message, ctx)
        unauthorized = code == "Unauthorized" or status == 401
        if ctx.checksums == "when_supported" and ctx.op in WRITE_OPS and unauthorized:
            # R2's misleading answer to a trailer it does not take: the keys may be fine.
            return AccessDenied(
                f"{ctx.where()}: Unauthorized. R2 answers this to the aws-chunked checksum "
                "trailer that request_checksum_calculation = 'when_supported' sends, as well as "
                "to bad keys: set request_checksum_calculation = 'when_required' (the default; "
                "TEMPLAR_S3_REQUEST_CHECKSUM_CALCULATION) before suspecting the keys"
            )
        if code in _BAD_SECRET | _UNKNOWN_KEY | _DENIED or status == 403:
            return denied(code, ctx)
        if code in _TRANSIENT or status in (408, 412, 429) or status >= 500:
            return TransientStorageError(
                f"{ctx.where()}: {code or status} after retries; try again later"
            )
        return StorageError(f"{ctx.where()}: {code or status}: {root}")
    if is_connection_error(root):
        return TransientStorageError(f"{ctx.where()}: connection failed after retries: {root}")
    return StorageError(f"{ctx.where()}: {type(root).__name__}: {root}")
