"""Peer lists and start windows in both protocol profiles: round trips through a store,
golden Templar bodies, hostile bodies refused with a reason."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core.peers import (
    InvalidPeerList,
    PeerList,
    get_peer_list,
    get_start_window,
    post_peer_list,
    post_start_window,
)
from core.profiles import NATIVE, TEMPLAR, ProtocolProfile
from ports import Bucket, Metagraph

V = "2.1.3"
BOTH = pytest.mark.parametrize("prof", [NATIVE, TEMPLAR], ids=lambda p: p.name)


def bucket(uid: int) -> Bucket:
    return Bucket(
        name=f"bucket-{uid}", account_id="a", access_key_id=f"k{uid}", secret_access_key="s"
    )


def metagraph(n: int = 8) -> Metagraph:
    validators = {0: 100.0, 1: 50.0}
    return Metagraph(
        block=1,
        uids=range(n),
        hotkeys=[f"hk{u}" for u in range(n)],
        stakes=[validators.get(u, 1.0) for u in range(n)],
        incentives=[0.0] * n,
        validator_permits=[u in validators for u in range(n)],
    )


def a_list(window: int = 10, effective: int = 11, **kw) -> PeerList:
    values = {
        "window": window,
        "first_effective_window": effective,
        "peers": (2, 3, 4),
        "reserves": (5,),
        "validator_uid": 0,
        "hotkey": "hk0",
        **kw,
    }
    return PeerList(**values)


# Golden bodies: what Templar's `post_peer_list` and `post_start_window` write,
# `json.dumps` of these dicts in this key order (src/tplr/comms.py at c2397ac).
TEMPLAR_PEERS = (
    b'{"peers": [2, 3, 4], "reserve_peers": [5], "initial_selection": true, '
    b'"sync_window": 10, "first_effective_window": 11}'
)
TEMPLAR_START = b'{"start_window": 51802}'


def test_templar_bodies_are_byte_for_byte_templars() -> None:
    codec = TEMPLAR.coordination
    assert codec.encode_peer_list(a_list(initial_selection=True), V) == TEMPLAR_PEERS
    assert codec.encode_start_window(51802, "hk0", V) == TEMPLAR_START


def test_a_templar_body_decodes_with_the_publisher_the_reader_expects() -> None:
    decoded = TEMPLAR.coordination.decode_peer_list(TEMPLAR_PEERS, V, 1, "hk1")
    assert decoded == a_list(initial_selection=True, validator_uid=1, hotkey="hk1")
    assert TEMPLAR.coordination.decode_start_window(TEMPLAR_START, V, "hk1") == 51802


@BOTH
@given(
    peers=st.lists(st.integers(0, 2**16 - 1), unique=True, max_size=40),
    window=st.integers(0, 2**40),
    margin=st.integers(0, 5),
    initial=st.booleans(),
)
def test_peer_list_codec_round_trips(
    prof: ProtocolProfile, peers: list[int], window: int, margin: int, initial: bool
) -> None:
    half = len(peers) // 2
    pl = a_list(window, window + margin, peers=peers[:half], reserves=peers[half:])
    if prof is TEMPLAR:  # a field only Templar's body carries
        pl = PeerList(**{**_fields(pl), "initial_selection": initial})
    codec = prof.coordination
    assert codec.decode_peer_list(codec.encode_peer_list(pl, V), V, 0, "hk0") == pl


def _fields(pl: PeerList) -> dict:
    return {
        "window": pl.window,
        "first_effective_window": pl.first_effective_window,
        "peers": pl.peers,
        "reserves": pl.reserves,
        "validator_uid": pl.validator_uid,
        "hotkey": pl.hotkey,
    }


@BOTH
@given(start=st.integers(0, 2**53 - 1))
def test_start_window_codec_round_trips(prof: ProtocolProfile, start: int) -> None:
    codec = prof.coordination
    assert codec.decode_start_window(codec.encode_start_window(start, "hk0", V), V, "hk0") == start


@BOTH
async def test_posted_lists_and_start_window_are_read_back_through_a_store(
    prof: ProtocolProfile,
) -> None:
    opener = MemoryStoreOpener(FakeClock())
    mg, commitments = metagraph(), {u: bucket(u) for u in range(8)}
    store = opener.open(bucket(0))
    kw = {"scheme": prof.keys, "codec": prof.coordination}
    for effective in (11, 13, 15):
        pl = a_list(effective - 1, effective, peers=(effective - 9,))
        await post_peer_list(store, pl, V, **kw)
    await post_start_window(store, 9, "hk0", V, **kw)

    got = await get_peer_list(opener, mg, commitments, 14, V, **kw)
    assert got is not None and got.first_effective_window == 13 and got.peers == (4,)
    assert got.validator_uid == 0 and got.hotkey == "hk0"
    assert await get_start_window(opener, mg, commitments, V, **kw) == 9
    names = sorted([m.key async for m in store.list("")])
    assert all(prof.keys.parse(n) is not None or n == prof.keys.peers_latest(V) for n in names)
    # The other profile sees nothing it can use.
    other = TEMPLAR if prof is NATIVE else NATIVE
    okw = {"scheme": other.keys, "codec": other.coordination}
    assert await get_peer_list(opener, mg, commitments, 14, V, **okw) is None
    assert await get_start_window(opener, mg, commitments, V, **okw) is None


async def test_templar_lists_are_found_by_listing_and_a_bad_newest_one_falls_back() -> None:
    opener = MemoryStoreOpener(FakeClock())
    mg, commitments = metagraph(), {0: bucket(0)}
    store = opener.open(bucket(0))
    await store.put("peers_11_v2.1.3.json", TEMPLAR_PEERS)
    await store.put("peers_12_v2.1.3.json", b'{"peers": [1, 1]}')
    await store.put("peers_99_v2.1.3.json", TEMPLAR_PEERS)  # not yet effective at 12
    kw = {"scheme": TEMPLAR.keys, "codec": TEMPLAR.coordination}
    got = await get_peer_list(opener, mg, commitments, 12, V, **kw)
    assert got is not None and got.first_effective_window == 11 and got.peers == (2, 3, 4)


GOOD = json.loads(TEMPLAR_PEERS)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"NaN", "not a JSON object"),
        (TEMPLAR_PEERS[:-1] + b', "peers": [9]}', "duplicate key"),
        ({k: v for k, v in GOOD.items() if k != "sync_window"}, "missing \\['sync_window'\\]"),
        ({**GOOD, "weights": {"2": 1.0}}, "extra \\['weights'\\]"),
        ({**GOOD, "peers": [2, 2]}, "duplicate uids"),
        ({**GOOD, "peers": [2, True]}, "non-negative"),
        ({**GOOD, "peers": [2, 3.0]}, "non-negative"),
        ({**GOOD, "peers": [2, -1]}, "non-negative"),
        ({**GOOD, "peers": [2, 2**16]}, "at most"),
        ({**GOOD, "peers": list(range(4097))}, "at most 4096"),
        ({**GOOD, "peers": "2,3"}, "list"),
        ({**GOOD, "reserve_peers": [2]}, "both a peer and a reserve"),
        ({**GOOD, "initial_selection": 1}, "boolean"),
        ({**GOOD, "initial_selection": "true"}, "boolean"),
        ({**GOOD, "sync_window": 12}, "before sync_window"),
        ({**GOOD, "sync_window": "10"}, "non-negative"),
        ({**GOOD, "first_effective_window": 2**53}, "at most"),
        ({**GOOD, "first_effective_window": None}, "non-negative"),
    ],
)
def test_hostile_templar_peer_lists_are_refused_with_a_reason(body, reason: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidPeerList, match=reason):
        TEMPLAR.coordination.decode_peer_list(data, V, 0, "hk0")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"start_window": -1}', "non-negative"),
        (b'{"start_window": 5.0}', "non-negative"),
        (b'{"start_window": true}', "non-negative"),
        (b'{"start_window": 9007199254740992}', "at most"),
        (b'{"start_window": 5, "start_window": 6}', "duplicate key"),
        (b'{"start_window": 5, "hotkey": "hk0"}', "extra \\['hotkey'\\]"),
        (b"{}", "missing \\['start_window'\\]"),
        (b'"5"', "not a JSON object"),
        (b'{"start_window": ' + b"9" * 5000 + b"}", "not JSON|at most"),
    ],
)
def test_hostile_templar_start_windows_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidPeerList, match=reason):
        TEMPLAR.coordination.decode_start_window(body, V, "hk0")


def test_a_native_list_naming_another_publisher_is_refused() -> None:
    body = NATIVE.coordination.encode_peer_list(a_list(validator_uid=1, hotkey="hk1"), V)
    with pytest.raises(InvalidPeerList, match="not signed by validator 0"):
        NATIVE.coordination.decode_peer_list(body, V, 0, "hk0")
    start = NATIVE.coordination.encode_start_window(5, "hk1", V)
    with pytest.raises(InvalidPeerList, match="hotkey"):
        NATIVE.coordination.decode_start_window(start, V, "hk0")


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_a_peer_list_or_invalid_never_another_error(data: bytes) -> None:
    for prof in (NATIVE, TEMPLAR):
        for decode in (
            lambda d, c=prof.coordination: c.decode_peer_list(d, V, 0, "hk0"),
            lambda d, c=prof.coordination: c.decode_start_window(d, V, "hk0"),
        ):
            with contextlib.suppress(InvalidPeerList):
                decode(data)
