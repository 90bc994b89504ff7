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


def _uint(body: Mapping, name: str, limit: int = MAX_WINDOW) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidPeerList(f"{name} must be a non-negative integer")
    if value > limit:
        raise InvalidPeerList(f"{name} must be at most {limit}")
    return value


def _body(data: bytes) -> Mapping:
    """A JSON object read from a peer's bucket: strict (a repeated key is refused)."""
    try:
        body = strict_json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidPeerList(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidPeerList("not a JSON object")
    return body


def _uids(body: Mapping, name: str) -> tuple[int, ...]:
    value = body.get(name)
    if not isinstance(value, list) or len(value) > MAX_UIDS:
        raise InvalidPeerList(f"{name} must be a list of at most {MAX_UIDS} uids")
    uids = tuple(_uint({"uid": v}, "uid", MAX_UID) for v in value)
    if len(set(uids)) != len(uids):
        raise InvalidPeerList(f"{name} has duplicate uids")
    return uids


def parse_peer_list(data: bytes, version: str) -> PeerList:
    """Decode and validate a published peer list; raises `InvalidPeerList`."""
    body = _body(data)
    if body.get("schema") != SCHEMA:
        raise InvalidPeerList(f"schema {body.get('schema')!r} is not {SCHEMA}")
    if body.get("version") != version:
        raise InvalidPeerList(f"version {body.get('version')!r} is not {version!r}")
    peers, reserves = _uids(body, "peers"), _uids(body, "reserves")
    if set(peers) & set(reserves):
        raise InvalidPeerList("a uid is both a peer and a reserve")
    window, effective = _uint(body, "window"), _uint(body, "first_effective_window")
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
        validator_uid=_uint(body, "validator_uid", MAX_UID),
        hotkey=hotkey,
    )


async def post_peer_list(store: ObjectStore, peer_list: PeerList, version: str) -> ObjectMeta:
    """Publish `peer_list` in our (validator) bucket under its effective window, then point
    the pointer at it (after, so the pointer never names a list not yet written)."""
    key = keys.peers(peer_list.first_effective_window, version)
    meta = await store.put(key, peer_list.to_json(version))
    await latest.advance(store, peer_list.first_effective_window, version)
    return meta


def _validators_with_buckets(
    metagraph: Metagraph, commitments: Mapping[int, Bucket]
) -> list[tuple[int, Bucket]]:
    return [(uid, commitments[uid]) for uid in metagraph.validators() if uid in commitments]


async def _lists_in(store: ObjectStore, window: int, version: str) -> list[int]:
    """Effective windows of the lists to try, newest first, none after `window`."""
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
) -> PeerList | None:
    """The newest valid peer list effective at `window`, uids not on the metagraph removed."""
    registered = frozenset(metagraph.uids)
    for vuid, bucket in _validators_with_buckets(metagraph, commitments):
        store = opener.open(bucket)
        try:
            candidates = await _lists_in(store, window, version)
        except StorageError as exc:
            log.warning("cannot list peer lists of validator %s: %s", vuid, exc)
            continue
        for effective in candidates[:MAX_LISTS_TRIED]:
            key = keys.peers(effective, version)
            try:
                peer_list = parse_peer_list(
                    (await store.get(key, max_bytes=max_bytes)).data, version
                )
            except (StorageError, InvalidPeerList) as exc:
                log.warning("skipping peer list %s of validator %s: %s", key, vuid, exc)
                continue
            if peer_list.hotkey != metagraph.hotkey(vuid) or peer_list.validator_uid != vuid:
                log.warning("skipping peer list %s: not signed by validator %s", key, vuid)
                continue
            unknown = (set(peer_list.peers) | set(peer_list.reserves)) - registered
            if unknown:
                log.warning(
                    "peer list %s names unknown uids %s; ignoring them", key, sorted(unknown)
                )
            return peer_list.restricted_to(registered)
    return None


async def post_start_window(
    store: ObjectStore, start_window: int, hotkey: str, version: str
) -> None:
    body = {"schema": SCHEMA, "version": version, "start_window": start_window, "hotkey": hotkey}
    await store.put(keys.start_window(version), json.dumps(body).encode())


async def get_start_window(
    opener: StoreOpener,
    metagraph: Metagraph,
    commitments: Mapping[int, Bucket],
    version: str,
    *,
    max_bytes: int = 4096,
    not_after: int | None = None,
) -> int | None:
    """The start window published by the highest-stake validator that has a valid one.

    `not_after` (the reader's next window): a start window beyond it is not valid, so a
    validator cannot make the network wait for a far future."""
    for vuid, bucket in _validators_with_buckets(metagraph, commitments):
        try:
            blob = await opener.open(bucket).get(keys.start_window(version), max_bytes=max_bytes)
            body = _body(blob.data)
            if body.get("version") != version:
                raise InvalidPeerList("wrong version or shape")
            if body.get("hotkey") != metagraph.hotkey(vuid):
                raise InvalidPeerList("hotkey does not match the validator")
            found = _uint(body, "start_window")
            if not_after is not None and found > not_after:
                raise InvalidPeerList(f"start window {found} is after window {not_after}")
            return found
        except (StorageError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            log.info("no usable start window from validator %s: %s", vuid, exc)
    return None
