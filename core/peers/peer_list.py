"""Peer lists and the start window: published by validators, read by everyone.

A validator that selects peers at window w publishes `peers-{w + margin}-v{version}.json`,
then the pointer `peers-latest-v{version}.json` (core/peers/latest.py) naming it; a reader of
window w takes the newest list effective at w from the highest-stake validator that has a
valid one, falling back to older lists and then to the next validator. The pointer says which
lists exist, so a read costs the same few requests however many lists a bucket holds; a
bucket without a usable pointer (written before pointers) is listed instead. Lists are
untrusted input: size-bounded before download, schema-checked, and their hotkey must be the
one the metagraph has at the publishing validator's uid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Protocol

import attrs

from core import keys, strict_json
from core.peers import latest
from ports import Bucket, Metagraph, ObjectMeta, ObjectStore, StorageError, StoreOpener

log = logging.getLogger(__name__)

SCHEMA = 1
MAX_UIDS = 4096
# Bounds on every number a peer list or start window carries: a uid fits Bittensor's u16, a
# window JSON's exact integers (2**53 - 1, which every client parses alike); a 4,000-digit
# "window" is refused, not carried around.
MAX_UID = 2**16 - 1
MAX_WINDOW = 2**53 - 1
MAX_LISTS_TRIED = 3


class InvalidPeerList(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid peer list: {reason}")
        self.reason = reason


@attrs.frozen
class PeerList:
    window: int
    first_effective_window: int
    peers: tuple[int, ...] = attrs.field(converter=tuple)
    reserves: tuple[int, ...] = attrs.field(converter=tuple, default=())
    validator_uid: int = 0
    hotkey: str = ""
    # Templar's flag: the first list of a run (no scores behind it yet).
    initial_selection: bool = False

    def restricted_to(self, uids: frozenset[int] | set[int]) -> PeerList:
        """The same list without the uids not in `uids` (e.g. not on the metagraph)."""
        return attrs.evolve(
            self,
            peers=tuple(u for u in self.peers if u in uids),
            reserves=tuple(u for u in self.reserves if u in uids),
        )

    def to_json(self, version: str) -> bytes:
        body = {
            "schema": SCHEMA,
            "version": version,
            "window": self.window,
            "first_effective_window": self.first_effective_window,
            "peers": list(self.peers),
            "reserves": list(self.reserves),
            "validator_uid": self.validator_uid,
            "hotkey": self.hotkey,
        }
        return json.dumps(body, separators=(",", ":")).encode()


def uint_field(body: Mapping, name: str, limit: int = MAX_WINDOW) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidPeerList(f"{name} must be a non-negative integer")
    if value > limit:
        raise InvalidPeerList(f"{name} must be at most {limit}")
    return value


def json_object(data: bytes) -> Mapping:
    """A JSON object read from a peer's bucket: strict (a repeated key is refused)."""
    try:
        body = strict_json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidPeerList(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidPeerList("not a JSON object")
    return body


def uid_list(body: Mapping, name: str) -> tuple[int, ...]:
    value = body.get(name)
    if not isinstance(value, list) or len(value) > MAX_UIDS:
        raise InvalidPeerList(f"{name} must be a list of at most {MAX_UIDS} uids")
    uids = tuple(uint_field({"uid": v}, "uid", MAX_UID) for v in value)
    if len(set(uids)) != len(uids):
        raise InvalidPeerList(f"{name} has duplicate uids")
    return uids


def parse_peer_list(data: bytes, version: str) -> PeerList:
    """Decode and validate a published peer list; raises `InvalidPeerList`."""
    body = json_object(data)
    if body.get("schema") != SCHEMA:
        raise InvalidPeerList(f"schema {body.get('schema')!r} is not {SCHEMA}")
    if body.get("version") != version:
        raise InvalidPeerList(f"version {body.get('version')!r} is not {version!r}")
    peers, reserves = uid_list(body, "peers"), uid_list(body, "reserves")
    if set(peers) & set(reserves):
        raise InvalidPeerList("a uid is both a peer and a reserve")
    window, effective = uint_field(body, "window"), uint_field(body, "first_effective_window")
    if effective < window:
        raise InvalidPeerList("first_effective_window is before window")
    hotkey = body.get("hotkey")
    if not isinstance(hotkey, str) or not hotkey or len(hotkey) > 128:
        raise InvalidPeerList("hotkey must be a non-empty string")
    return PeerList(
        window=window,
        first_effective_window=effective,
        peers=peers,
        reserves=reserves,
        validator_uid=uint_field(body, "validator_uid", MAX_UID),
        hotkey=hotkey,
    )


class CoordinationCodec(Protocol):
    """The bodies of a profile's peer lists and start window (core/profiles.py picks one).

    A decoder takes the publisher the reader expects (the validator whose bucket it read) and
    raises `InvalidPeerList` for anything it would not act on: wrong shape, out-of-range
    numbers, duplicate uids, or a body that names another publisher.
    """

    name: str

    def encode_peer_list(self, peer_list: PeerList, version: str) -> bytes: ...
    def decode_peer_list(
        self, data: bytes, version: str, validator_uid: int, hotkey: str
    ) -> PeerList: ...
    def encode_start_window(self, start_window: int, hotkey: str, version: str) -> bytes: ...
    def decode_start_window(self, data: bytes, version: str, hotkey: str) -> int: ...


@attrs.frozen
class NativeCoordination:
    """Our bodies: versioned, and naming the publishing validator's uid and hotkey."""

    name: str = "native"

    def encode_peer_list(self, peer_list: PeerList, version: str) -> bytes:
        return peer_list.to_json(version)

    def decode_peer_list(
        self, data: bytes, version: str, validator_uid: int, hotkey: str
    ) -> PeerList:
        peer_list = parse_peer_list(data, version)
        if peer_list.hotkey != hotkey or peer_list.validator_uid != validator_uid:
            raise InvalidPeerList(f"not signed by validator {validator_uid}")
        return peer_list

    def encode_start_window(self, start_window: int, hotkey: str, version: str) -> bytes:
        body = {
            "schema": SCHEMA,
            "version": version,
            "start_window": start_window,
            "hotkey": hotkey,
        }
        return json.dumps(body).encode()

    def decode_start_window(self, data: bytes, version: str, hotkey: str) -> int:
        body = json_object(data)
        if body.get("version") != version:
            raise InvalidPeerList("wrong version or shape")
        if body.get("hotkey") != hotkey:
            raise InvalidPeerList("hotkey does not match the validator")
        return uint_field(body, "start_window")


NATIVE = NativeCoordination()


async def post_peer_list(
    store: ObjectStore,
    peer_list: PeerList,
    version: str,
    *,
    scheme: keys.KeyScheme = keys.NATIVE,
    codec: CoordinationCodec = NATIVE,
) -> ObjectMeta:
    """Publish `peer_list` in our (validator) bucket under its effective window, then point
    the pointer at it (after, so the pointer never names a list not yet written), for a
    scheme that has one."""
    key = scheme.peers(peer_list.first_effective_window, version)
    meta = await store.put(key, codec.encode_peer_list(peer_list, version))
    if scheme.peers_latest(version) is not None:
        await latest.advance(store, peer_list.first_effective_window, version)
    return meta


def _validators_with_buckets(
    metagraph: Metagraph, commitments: Mapping[int, Bucket]
) -> list[tuple[int, Bucket]]:
    return [(uid, commitments[uid]) for uid in metagraph.validators() if uid in commitments]


async def _lists_in(
    store: ObjectStore, window: int, version: str, scheme: keys.KeyScheme
) -> list[int]:
    """Effective windows of the lists to try, newest first, none after `window`."""
    if scheme.peers_latest(version) is None:
        return await latest.listed(store, version, window, scheme=scheme)
    try:
        pointed = await latest.read(store, version)
    except latest.InvalidPointer as exc:
        log.warning("unusable peer-list pointer in %s, listing instead: %s", store.name, exc)
        pointed = None
    if pointed is None:
        return await latest.listed(store, version, window)
    # Entries after `window` are lists not yet in effect (or junk): never candidates.
    return [w for w in pointed if w <= window]


async def get_peer_list(
    opener: StoreOpener,
    metagraph: Metagraph,
    commitments: Mapping[int, Bucket],
    window: int,
    version: str,
    *,
    max_bytes: int = 256 * 1024,
    scheme: keys.KeyScheme = keys.NATIVE,
    codec: CoordinationCodec = NATIVE,
) -> PeerList | None:
    """The newest valid peer list effective at `window`, uids not on the metagraph removed."""
    registered = frozenset(metagraph.uids)
    for vuid, bucket in _validators_with_buckets(metagraph, commitments):
        store = opener.open(bucket)
        try:
            candidates = await _lists_in(store, window, version, scheme)
        except StorageError as exc:
            log.warning("cannot list peer lists of validator %s: %s", vuid, exc)
            continue
        for effective in candidates[:MAX_LISTS_TRIED]:
            key = scheme.peers(effective, version)
            try:
                blob = await store.get(key, max_bytes=max_bytes)
                peer_list = codec.decode_peer_list(blob.data, version, vuid, metagraph.hotkey(vuid))
            except (StorageError, InvalidPeerList) as exc:
                log.warning("skipping peer list %s of validator %s: %s", key, vuid, exc)
                continue
            unknown = (set(peer_list.peers) | set(peer_list.reserves)) - registered
            if unknown:
                log.warning(
                    "peer list %s names unknown uids %s; ignoring them", key, sorted(unknown)
                )
            return peer_list.restricted_to(registered)
    return None


async def post_start_window(
    store: ObjectStore,
    start_window: int,
    hotkey: str,
    version: str,
    *,
    scheme: keys.KeyScheme = keys.NATIVE,
    codec: CoordinationCodec = NATIVE,
) -> None:
    body = codec.encode_start_window(start_window, hotkey, version)
    await store.put(scheme.start_window(version), body)


async def get_start_window(
    opener: StoreOpener,
    metagraph: Metagraph,
    commitments: Mapping[int, Bucket],
    version: str,
    *,
    max_bytes: int = 4096,
    not_after: int | None = None,
    scheme: keys.KeyScheme = keys.NATIVE,
    codec: CoordinationCodec = NATIVE,
) -> int | None:
    """The start window published by the highest-stake validator that has a valid one.

    `not_after` (the reader's next window): a start window beyond it is not valid, so a
    validator cannot make the network wait for a far future."""
    for vuid, bucket in _validators_with_buckets(metagraph, commitments):
        try:
            blob = await opener.open(bucket).get(scheme.start_window(version), max_bytes=max_bytes)
            found = codec.decode_start_window(blob.data, version, metagraph.hotkey(vuid))
            if not_after is not None and found > not_after:
                raise InvalidPeerList(f"start window {found} is after window {not_after}")
            return found
        except (StorageError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            log.info("no usable start window from validator %s: %s", vuid, exc)
    return None
