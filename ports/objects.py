"""Value objects exchanged through the storage port."""

from __future__ import annotations

import re
from datetime import datetime

import attrs

from ports.errors import InvalidKey

MAX_KEY_BYTES = 1024


def check_key(key: str) -> str:
    """Return `key` if it is a safe object name, else raise `InvalidKey`.

    One rule for every adapter, so a key that works on memory works on S3 and on disk:
    non-empty UTF-8 of at most 1024 bytes, `/`-separated segments, none of them empty, `.` or
    `..`, no leading `/`, no backslash, no NUL or other control character.
    """
    if not isinstance(key, str):
        raise InvalidKey(repr(key), "not a string")
    if not key:
        raise InvalidKey(key, "empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(key[:64] + "...", f"longer than {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidKey(key, "contains a control character (NUL included)")
    if "\\" in key:
        raise InvalidKey(key, "contains a backslash")
    if key.startswith("/"):
        raise InvalidKey(key, "absolute path")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(key, f"has an empty, '.' or '..' segment ({segment!r})")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(key, "not valid UTF-8") from exc
    return key


def _tz_aware(_: object, attribute: attrs.Attribute, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{attribute.name} must be timezone-aware, got {value!r}")


@attrs.frozen
class ObjectMeta:
    """What a store knows of one object without reading it."""

    key: str
    size: int = attrs.field(validator=attrs.validators.ge(0))
    last_modified: datetime = attrs.field(validator=_tz_aware)
    etag: str = ""


@attrs.frozen
class Blob:
    """An object's bytes with its metadata."""

    meta: ObjectMeta
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")


# R2's endpoint is `https://{account_id}.r2.cloudflarestorage.com`: an account id that is not
# one DNS label ("evil.com/#") would send the request, signed, to another host.
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _dns_label(_: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str) or _DNS_LABEL.fullmatch(value) is None:
        # The value is untrusted and may be long or hostile: its length only.
        size = len(value) if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{attribute.name} must be one DNS label (got {size} characters)")


@attrs.frozen
class Bucket:
    """Where and how to reach one bucket. Read and write keys are different Buckets.

    The secret never appears in `repr`, `str`, logs or exception messages; use
    `secret_access_key` only to hand it to a client.
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    account_id: str = attrs.field(validator=_dns_label)
    access_key_id: str
    secret_access_key: str = attrs.field(repr=False)
    endpoint: str | None = None

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint: explicit, else Cloudflare R2's for the account."""
        if self.endpoint:
            return self.endpoint
        return f"https://{self.account_id}.r2.cloudflarestorage.com"
