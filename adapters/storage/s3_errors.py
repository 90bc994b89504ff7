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
        "412",
    }
)
WRITE_OPS = frozenset({"put", "put_file", "delete"})


@attrs.frozen
class Context:
    """What an error message may say about the failing call (no secret here, by design)."""

    bucket: str
    endpoint: str
    access_key_id: str
    op: str
    key: str | None = None

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
