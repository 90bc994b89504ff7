"""Ports: the interfaces the domain depends on and the values they exchange.

Nothing here imports a vendor SDK, the filesystem or the environment.
"""

from ports.chain import Chain, Metagraph
from ports.clock import Clock
from ports.errors import (
    AccessDenied,
    ChainError,
    InvalidKey,
    NotFound,
    StorageError,
    TooLarge,
    TransientStorageError,
)
from ports.objects import Blob, Bucket, ObjectMeta, check_key
from ports.storage import BytesLike, ObjectStore, StoreOpener

__all__ = [
    "AccessDenied",
    "Blob",
    "Bucket",
    "BytesLike",
    "Chain",
    "ChainError",
    "Clock",
    "InvalidKey",
    "Metagraph",
    "NotFound",
    "ObjectMeta",
    "ObjectStore",
    "StorageError",
    "StoreOpener",
    "TooLarge",
    "TransientStorageError",
    "check_key",
]
