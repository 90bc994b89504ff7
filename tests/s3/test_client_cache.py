"""The opener's client cache: one client per (endpoint, bucket, credentials), kept from one
window to the next, bounded (LRU over idle clients), evicted clients closed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from adapters.storage.s3 import S3Settings, S3StoreOpener
from ports import Bucket, TransientStorageError
from tests.s3.server import SeaweedServer
from tests.s3.wire import HTTPS_ENDPOINT, Wire


class Clients:
    """Every client an opener builds, and which of them were closed."""

    def __init__(self, wire: Wire | None = None) -> None:
        self.built: list[Any] = []
        self.closed: list[Any] = []
        self._wire = wire

    def __call__(self, client: Any) -> None:
        if self._wire is not None:
            self._wire.attach(client)
        close = client.close

        def recording_close() -> None:
            self.closed.append(client)
            close()

        client.close = recording_close
        self.built.append(client)


def _bucket(name: str, key_id: str = "KEYID", secret: str = "s3cr3t") -> Bucket:
    return Bucket(name, "acct", key_id, secret, endpoint=HTTPS_ENDPOINT)


def _opener(cache: int) -> tuple[S3StoreOpener, Clients, Wire]:
    wire = Wire()
    clients = Clients(wire)
    settings = S3Settings(client_cache_size=cache, max_attempts=1)
    return S3StoreOpener(settings, on_client=clients), clients, wire


async def _window(opener: S3StoreOpener, *buckets: Bucket) -> list[Any]:
    """One window of a gather: a store per peer, used once, closed. Returns their clients."""
    used = []
    for bucket in buckets:
        store = opener.open(bucket)
        await store.head("gradient")
        used.append(store.client)
        await store.close()
    return used


async def test_a_client_is_reused_from_one_window_to_the_next(
    seaweedfs: SeaweedServer, bucket_name: str
) -> None:
    clients = Clients()
    opener = S3StoreOpener(S3Settings(), on_client=clients)
    bucket = seaweedfs.bucket(bucket_name)
    first = None
    for window in range(3):
        store = opener.open(bucket)
        await store.put(f"gradient-{window}", b"g")
        assert (await store.get(f"gradient-{window}")).data == b"g"
        first = first or store.client
        assert store.client is first
        await store.close()
    assert clients.built == [first] and clients.closed == []
    opener.close()
    assert clients.closed == [first]


async def test_one_client_per_bucket_and_credentials() -> None:
    opener, clients, _ = _opener(cache=8)
    a, a_again = _bucket("a"), _bucket("a")
    other_key, other_secret = _bucket("a", key_id="OTHER"), _bucket("a", secret="other")
    used = await _window(opener, a, a_again, other_key, other_secret, _bucket("b"))
    assert used[0] is used[1]
    assert len({id(c) for c in used}) == 4 == len(clients.built)
    opener.close()


async def test_idle_clients_are_capped_least_recently_used_first_and_closed() -> None:
    opener, clients, _ = _opener(cache=2)
    a, b, c, d = (_bucket(n) for n in "abcd")
    ca, cb, cc = await _window(opener, a, b, c)
    assert clients.closed == [ca] and opener.cached == 2  # a was the least recently used
    await _window(opener, b)  # b is now the most recent: c goes next
    (cd,) = await _window(opener, d)
    assert clients.closed == [ca, cc]
    assert await _window(opener, b, d) == [cb, cd]  # still cached
    (ca2,) = await _window(opener, a)  # rebuilt after its eviction
    assert ca2 not in (ca, cb, cc, cd) and len(clients.built) == 5
    opener.close()
    assert {id(c) for c in clients.closed} == {id(c) for c in clients.built}


async def test_a_client_in_use_is_never_evicted() -> None:
    held, release = threading.Event(), threading.Event()

    def hold(request: Any, **_: Any) -> None:
        if "/slow/" in request.url:
            held.set()
            release.wait(10)

    clients = Clients(Wire())

    def on_client(client: Any) -> None:
        client.meta.events.register("before-send.s3", hold)  # before the wire answers
        clients(client)

    opener = S3StoreOpener(S3Settings(client_cache_size=0, max_attempts=1), on_client=on_client)
    slow = opener.open(_bucket("slow"))
    call = asyncio.ensure_future(slow.head("k"))
    await asyncio.to_thread(held.wait, 10)
    await _window(opener, _bucket("other"))  # a cache of 0: closed as soon as it is idle
    busy, other = clients.built
    assert clients.closed == [other] and slow.client is busy
    release.set()
    assert await call is None
    assert clients.closed == [other, busy]  # idle now, so over the cap
    opener.close()


async def test_a_cache_of_zero_closes_a_client_after_each_call() -> None:
    opener, clients, _ = _opener(cache=0)
    store = opener.open(_bucket("a"))
    await store.head("k")
    await store.head("k")
    assert len(clients.built) == 2 and clients.closed == clients.built
    assert opener.cached == 0
    opener.close()


async def test_stores_left_open_do_not_hold_clients() -> None:
    """The domain services open a store per peer and window and do not close it: the cache
    stays bounded all the same."""
    opener, clients, _ = _opener(cache=2)
    stores = [opener.open(_bucket(n)) for n in "abcdef"]
    for store in stores:
        await store.head("k")
    assert opener.cached == 2 and len(clients.closed) == 4
    opener.close()


async def test_a_purged_client_is_rebuilt_in_the_same_cache_entry() -> None:
    opener, clients, wire = _opener(cache=4)
    store = opener.open(_bucket("a"))
    await store.head("k")
    broken = store.client
    wire.down = True
    with pytest.raises(TransientStorageError, match="connection"):
        await store.head("k")
    assert store.client is None and clients.closed == [broken]
    wire.down = False
    await store.head("k")
    assert store.client is not broken and len(clients.built) == 2
    await store.close()
    assert await _window(opener, _bucket("a")) == [clients.built[1]]  # the rebuilt one, cached
    opener.close()


def test_the_cache_size_is_validated() -> None:
    assert S3Settings().client_cache_size == 256
    with pytest.raises(ValueError):
        S3Settings(client_cache_size=-1)
