"""Reading the current peer list costs the same few requests however many lists a validator's
bucket holds; the pointer that makes it so is untrusted input, and buckets without one (written
before pointers) still read correctly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.clock import FakeClock
from adapters.storage.chaos import ChaosStore, Fault
from adapters.storage.memory import MemoryStoreOpener
from core import keys
from core.peers import PeerList, get_peer_list, latest, post_peer_list
from ports import TransientStorageError
from tests.support.counting import CountingOpener
from tests.unit.test_peers import V, bucket, metagraph

VALIDATOR = bucket(0)
COMMITMENTS = {0: VALIDATOR}


def peer_list(effective: int, peers: tuple[int, ...] = (2, 3)) -> PeerList:
    return PeerList(
        window=max(0, effective - 2),
        first_effective_window=effective,
        peers=peers,
        validator_uid=0,
        hotkey="hk0",
    )


async def legacy_lists(opener, count: int) -> None:
    """`count` lists as a validator wrote them before pointers: no pointer."""
    store = opener.open(VALIDATOR)
    for w in range(count):
        await store.put(keys.peers(w, V), peer_list(w).to_json(V))


async def read(opener, window: int) -> PeerList | None:
    return await get_peer_list(opener, metagraph(), COMMITMENTS, window, V)


@pytest.mark.parametrize("old", [10, 10_000])
async def test_reading_the_current_list_costs_two_gets_however_many_lists(old: int) -> None:
    opener = CountingOpener(MemoryStoreOpener(FakeClock()))
    await legacy_lists(opener, old)
    newest = peer_list(old + 2, peers=(4, 5))
    await post_peer_list(opener.open(VALIDATOR), newest, V)  # seeds the pointer once
    opener.counts.clear()
    assert await read(opener, old + 2) == newest
    assert opener.counts == {"get": 2}  # the pointer, the list: same for 10 and 10,000
    opener.counts.clear()
    assert (await read(opener, old + 1)).first_effective_window == old - 1
    assert opener.counts == {"get": 2}


async def test_without_a_pointer_readers_list_as_before_and_pay_per_page() -> None:
    opener = CountingOpener(MemoryStoreOpener(FakeClock()))
    await legacy_lists(opener, 2_500)
    opener.counts.clear()
    assert (await read(opener, 2_400)).first_effective_window == 2_400
    # What the pointer saves: a page per 1,000 lists, on every read.
    assert opener.counts == {"get": 2, "list": 3}


async def test_the_first_list_after_an_upgrade_seeds_the_pointer_from_a_listing() -> None:
    opener = MemoryStoreOpener(FakeClock())
    await legacy_lists(opener, 30)
    assert await latest.advance(opener.open(VALIDATOR), 32, V) == (32, *range(29, 14, -1))
    # A reader between the old lists and the new one still finds the old one via the pointer.
    assert (await read(opener, 31)).first_effective_window == 29


async def test_the_pointer_keeps_the_newest_sixteen_and_drops_entries_ahead() -> None:
    store = MemoryStoreOpener(FakeClock()).open(VALIDATOR)
    await store.put(keys.peers_latest(V), latest.encode([10**12, 5], V))
    assert await latest.advance(store, 7, V) == (7, 5)  # the junk entry above 7 is gone
    for w in range(8, 40):
        await latest.advance(store, w, V)
    assert await latest.read(store, V) == tuple(range(39, 23, -1))


async def test_a_storage_error_while_advancing_leaves_the_old_pointer() -> None:
    clock = FakeClock()
    inner = MemoryStoreOpener(clock).open(VALIDATOR)
    await latest.advance(inner, 5, V)
    broken = Fault(error_rate=1.0, error=TransientStorageError)
    chaos = ChaosStore(inner, clock, lambda op, key: broken if op == "get" else Fault())
    with pytest.raises(TransientStorageError):
        await latest.advance(chaos, 6, V)
    assert await latest.read(inner, V) == (5,)


async def test_lists_the_pointer_names_but_the_janitor_removed_fall_back_to_older_ones() -> None:
    opener = CountingOpener(MemoryStoreOpener(FakeClock()))
    store = opener.open(VALIDATOR)
    for w in (5, 6, 7, 8):
        await post_peer_list(store, peer_list(w), V)
    await store.delete([keys.peers(8, V), keys.peers(7, V)])
    opener.counts.clear()
    assert (await read(opener, 8)).first_effective_window == 6
    assert opener.counts == {"get": 4}
    await store.delete([keys.peers(6, V)])
    opener.counts.clear()
    assert await read(opener, 8) is None  # three tries, then the next validator (none here)
    assert opener.counts == {"get": 4}


async def test_pointer_entries_ahead_of_the_window_are_never_read() -> None:
    opener = MemoryStoreOpener(FakeClock())
    store = opener.open(VALIDATOR)
    await store.put(keys.peers(5, V), peer_list(5).to_json(V))
    await store.put(keys.peers(10**12, V), peer_list(10**12, peers=(9,)).to_json(V))
    await store.put(keys.peers_latest(V), latest.encode([10**12, 5], V))
    assert (await read(opener, 6)).first_effective_window == 5
    assert await read(opener, 4) is None  # a valid pointer is the index: no listing


def body(**fields) -> bytes:
    base = {"schema": 1, "version": V, "windows": [3, 2]}
    return json.dumps({**base, **fields}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b'{"schema": 1, "schema": 1, "version": "1", "windows": [3]}',
        b"\xff\xfe",
        json.dumps([1, 2]).encode(),
        body(schema=2),
        body(version="0"),
        body(extra=1),
        body(windows=[]),
        body(windows=list(range(17, 0, -1))),
        body(windows=[3, -1]),
        body(windows=[True]),
        body(windows=[2.0]),
        body(windows=[2, 3]),
        body(windows=[3, 3]),
        body(windows="3"),
        b" " * (latest.MAX_BYTES + 1),
    ],
)
async def test_an_unusable_pointer_is_refused_and_readers_list_instead(data: bytes) -> None:
    opener = MemoryStoreOpener(FakeClock())
    await legacy_lists(opener, 4)
    store = opener.open(VALIDATOR)
    await store.put(keys.peers_latest(V), data)
    with pytest.raises(latest.InvalidPointer):
        await latest.read(store, V)
    assert (await read(opener, 9)).first_effective_window == 3


@given(st.sets(st.integers(0, 2**63), min_size=1, max_size=latest.MAX_WINDOWS))
def test_pointer_round_trip(windows: set[int]) -> None:
    ordered = sorted(windows, reverse=True)
    assert latest.parse(latest.encode(ordered, V), V) == tuple(ordered)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_parse_or_are_refused(data: bytes) -> None:
    try:
        windows = latest.parse(data, V)
    except latest.InvalidPointer:
        return
    assert list(windows) == sorted(set(windows), reverse=True)
