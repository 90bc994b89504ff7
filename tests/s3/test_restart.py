"""The server dies mid-run: calls fail as TransientStorageError, then recover on a new client.

Uses its own SeaweedFS so that killing it cannot disturb the session's server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from adapters.storage.s3 import S3Settings, S3StoreOpener
from ports import StorageError, TransientStorageError
from tests.s3.server import SeaweedServer
from tests.s3.server import private_server as start_private_server

# Few attempts and short timeouts: the outage should surface in about a second.
FAST_FAIL = S3Settings(max_attempts=2, connect_timeout=1.0, read_timeout=3.0)


@pytest.fixture
def private_server() -> Iterator[SeaweedServer]:
    with start_private_server() as server:
        yield server


async def test_killed_server_gives_transient_errors_then_recovers_on_a_fresh_client(
    private_server: SeaweedServer,
) -> None:
    server = private_server
    name = server.create_bucket("restart")
    opener = S3StoreOpener(FAST_FAIL)
    store = opener.open(server.bucket(name))
    await store.put("obj", b"before")
    before = store.client
    assert before is not None

    successes, failures = 0, []
    warmed, failed, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def reader() -> None:
        nonlocal successes
        while not stop.is_set():
            try:
                assert (await store.get("obj")).data == b"before"
                successes += 1
                if successes >= 8:
                    warmed.set()
            except StorageError as exc:
                failures.append(exc)
                failed.set()
            await asyncio.sleep(0.01)

    readers = [asyncio.create_task(reader()) for _ in range(4)]
    await asyncio.wait_for(warmed.wait(), 20)
    await asyncio.to_thread(server.stop)  # SIGKILL, as a crash
    await asyncio.wait_for(failed.wait(), 20)
    stop.set()
    await asyncio.gather(*readers)

    assert all(type(exc) is TransientStorageError for exc in failures), failures
    assert "connection failed" in str(failures[0])
    for exc in failures:
        assert server.admin[1] not in f"{exc} {exc!r} {exc.__cause__} {exc.__cause__!r}"
    assert store.client is not before  # purged: the broken pool is not reused
    with pytest.raises(TransientStorageError):
        await store.head("obj")

    await asyncio.to_thread(server.start)  # same ports, same data directory
    await store.put("after", b"restarted")
    assert (await store.get("after")).data == b"restarted"
    after = store.client
    assert after is not None and after is not before
    await store.close()
    opener.close()
