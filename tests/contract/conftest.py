"""Every ObjectStore adapter, behind one fixture, so the contract suite runs on each.

To add an adapter: write an async context manager yielding a `StoreCase` and add it to
`STORE_FACTORIES`. Later adapters (S3 over SeaweedFS, chaos) register here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from adapters.clock import FakeClock
from adapters.storage.chaos import ChaosStore
from adapters.storage.local import LocalStoreOpener
from adapters.storage.memory import MemoryStoreOpener
from adapters.storage.obstore_store import ObstoreStoreOpener
from adapters.storage.s3 import S3StoreOpener
from ports import Bucket, ObjectStore
from tests.s3.server import ServerUnavailable, shared_server


@attrs.define
class StoreCase:
    store: ObjectStore
    # Lets time pass between two writes (a fake clock advances, a real one is waited on).
    tick: Callable[[], Awaitable[None]]


def test_bucket(name: str = "contract") -> Bucket:
    return Bucket(name=name, account_id="acct", access_key_id="key", secret_access_key="secret")


test_bucket.__test__ = False  # not a test, despite its name


@contextlib.asynccontextmanager
async def memory_case(tmp_path: Path) -> AsyncIterator[StoreCase]:
    clock = FakeClock()

    async def tick() -> None:
        clock.advance(1.0)

    store = MemoryStoreOpener(clock).open(test_bucket())
    yield StoreCase(store=store, tick=tick)
    await store.close()


def local_fake_clock_case(
    direct_bytes: int | None,
) -> Callable[[Path], contextlib.AbstractAsyncContextManager[StoreCase]]:
    @contextlib.asynccontextmanager
    async def make(tmp_path: Path) -> AsyncIterator[StoreCase]:
        clock = FakeClock()

        async def tick() -> None:
            clock.advance(1.0)

        opener = LocalStoreOpener(tmp_path / "buckets", clock=clock, direct_bytes=direct_bytes)
        store = opener.open(test_bucket())
        yield StoreCase(store=store, tick=tick)
        await store.close()

    return make


@contextlib.asynccontextmanager
async def local_system_clock_case(tmp_path: Path) -> AsyncIterator[StoreCase]:
    import asyncio

    async def tick() -> None:
        await asyncio.sleep(0.002)

    # Objects from 8 MiB (the suite's large ones) around the page cache, as a neuron with
    # storage_direct_bytes = 8388608 writes them.
    store = LocalStoreOpener(tmp_path / "buckets", direct_bytes=8 << 20).open(test_bucket())
    yield StoreCase(store=store, tick=tick)
    await store.close()


@contextlib.asynccontextmanager
async def chaos_case(tmp_path: Path) -> AsyncIterator[StoreCase]:
    """The chaos wrapper with no faults must be a transparent proxy."""
    clock = FakeClock()

    async def tick() -> None:
        clock.advance(1.0)

    store = ChaosStore(MemoryStoreOpener(clock).open(test_bucket()), clock)
    yield StoreCase(store=store, tick=tick)
    await store.close()


def s3_case(
    make_opener: Callable[[], Any],
) -> Callable[[Path], contextlib.AbstractAsyncContextManager[StoreCase]]:
    """A fresh bucket on the session's SeaweedFS, through the opener `make_opener` builds."""

    @contextlib.asynccontextmanager
    async def make(tmp_path: Path) -> AsyncIterator[StoreCase]:
        async with _s3_store(make_opener()) as made:
            yield made

    return make


@contextlib.asynccontextmanager
async def _s3_store(opener: Any) -> AsyncIterator[StoreCase]:
    import asyncio

    try:
        server = shared_server()
    except ServerUnavailable as exc:
        pytest.skip(f"SeaweedFS cannot start: {exc}")

    async def tick() -> None:
        # Last-Modified has one-second resolution on S3 (and on SeaweedFS).
        await asyncio.sleep(1.05)

    name = await asyncio.to_thread(server.create_bucket, "contract")
    store = opener.open(server.bucket(name))
    try:
        yield StoreCase(store=store, tick=tick)
    finally:
        await store.close()
        opener.close()
        await asyncio.to_thread(server.delete_bucket, name)


STORE_FACTORIES: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[StoreCase]]] = {
    "memory": memory_case,
    "local": local_fake_clock_case(None),  # the default: every object through the page cache
    "local-system-clock": local_system_clock_case,
    # Direct I/O from 8 KiB, so objects of every size the suite writes cross the switch.
    "local-small-direct": local_fake_clock_case(8192),
    "chaos": chaos_case,
    "s3": s3_case(S3StoreOpener),
    "obstore": s3_case(ObstoreStoreOpener),
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreCase]:
    async with STORE_FACTORIES[request.param](tmp_path) as made:
        yield made
