"""Errors every storage adapter maps its vendor's failures onto.

The domain only ever catches these; an adapter that lets a vendor exception escape is a bug.
"""

from __future__ import annotations


class StorageError(Exception):
    """A storage operation failed and retrying it will not help."""


class NotFound(StorageError):
    """The key does not exist in the bucket."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key!r}")
        self.key = key


class TooLarge(StorageError):
    """The object is larger than the caller allowed; nothing of its body was read."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"object {key!r} is {size} bytes, over the limit of {limit}")
        self.key = key
        self.size = size
        self.limit = limit


class AccessDenied(StorageError):
    """The credentials are wrong, or lack the permission (e.g. a read-only key used to write)."""


class TransientStorageError(StorageError):
    """A failure that may pass: throttling, 5xx, a reset connection, a timeout.

    Adapters raise it only after their own retries are spent; callers may retry later.
    """


class InvalidKey(StorageError, ValueError):
    """The key is not one this system will ever read or write (see `ports.keys.check_key`)."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"invalid object key {key!r}: {why}")
        self.key = key
        self.why = why


class ChainError(Exception):
    """A chain operation failed after the adapter's retries."""
