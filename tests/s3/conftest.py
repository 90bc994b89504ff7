"""Fixtures for the S3 adapter's own tests: a fresh bucket per test on the session server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from adapters.storage.s3 import S3Settings, S3Store, S3StoreOpener
from tests.s3.server import SeaweedServer


@pytest.fixture
def bucket_name(seaweedfs: SeaweedServer) -> Iterator[str]:
    name = seaweedfs.create_bucket("s3test")
    yield name
    seaweedfs.delete_bucket(name)


@pytest.fixture
def opener() -> Iterator[S3StoreOpener]:
    made = S3StoreOpener(S3Settings())
    yield made
    made.close()


@pytest.fixture
async def store(
    seaweedfs: SeaweedServer, bucket_name: str, opener: S3StoreOpener
) -> AsyncIterator[S3Store]:
    made = opener.open(seaweedfs.bucket(bucket_name))
    yield made
    await made.close()
