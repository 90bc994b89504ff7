"""The opener's client cache: one client per (endpoint, bucket, credentials), kept from one
window to the next, bounded (LRU over idle clients), evicted clients closed."""

from __future__ import annotations

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


async def test_clients_in_use_are_never_evicted() -> None:
    opener, clients, _ = _opener(cache=1)
    stores = [opener.open(_bucket(n)) for n in "abc"]
    for store in stores:
        await store.head("k")
    assert clients.closed == [] and opener.cached == 3  # over the cap, all in use
    for store in stores:
        await store.close()
    # Released a, b, c in that order: only c, the most recent, stays.
    assert clients.closed == clients.built[:2] and opener.cached == 1
    opener.close()


async def test_a_cache_of_zero_closes_a_client_with_its_last_store() -> None:
    opener, clients, _ = _opener(cache=0)
    one, two = opener.open(_bucket("a")), opener.open(_bucket("a"))
    await one.head("k")
    await one.close()
    assert clients.closed == []  # `two` still uses it
    await two.close()
    assert clients.closed == clients.built and opener.cached == 0
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
