"""Session-wide fixtures: the SeaweedFS server behind the S3 adapter's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3.server import SeaweedServer, ServerUnavailable, shared_server, stop_shared_server


@pytest.fixture(scope="session", autouse=True)
def _stop_seaweedfs_at_exit() -> Iterator[None]:
    # The server starts lazily on first use (contract suite or tests/s3); stop it once, here.
    yield
    stop_shared_server()


@pytest.fixture(scope="session")
def seaweedfs() -> SeaweedServer:
    """SeaweedFS on 127.0.0.1 with an admin and a read-only identity; skips if it cannot run."""
    try:
        return shared_server()
    except ServerUnavailable as exc:
        pytest.skip(f"SeaweedFS cannot start: {exc}")
