"""Templar's peer-list and start-window bodies (docs/templar.md, "Keys and objects").

    peers_{w}_v{ver}.json        {"peers": [...], "reserve_peers": [...],
                                  "initial_selection": bool, "sync_window": int,
                                  "first_effective_window": int}
    start_window_v{ver}.json     {"start_window": int}

Templar writes them with `json.dumps` and its default separators; `encode_*` writes the same
bytes. Neither body names its publisher: the bucket does, through the validator's commitment
on the chain, so a reader fills in the validator it read from. Read as strictly as our own
bodies: strict JSON (a repeated key is refused), exactly Templar's keys, booleans and integers
of the right type, windows and uids in range, no duplicate uid, no uid both a peer and a
reserve, and a list that takes effect before it was selected is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs

from core.peers.peer_list import (
    InvalidPeerList,
    PeerList,
    json_object,
    uid_list,
    uint_field,
)

PEER_LIST_KEYS = frozenset(
    {"peers", "reserve_peers", "initial_selection", "sync_window", "first_effective_window"}
)
START_WINDOW_KEYS = frozenset({"start_window"})


def _exact_keys(body: Mapping, expected: frozenset[str], what: str) -> None:
    if set(body) != expected:
        extra, missing = sorted(set(body) - expected), sorted(expected - set(body))
        raise InvalidPeerList(
            f"{what} keys differ from Templar's: extra {extra}, missing {missing}"
        )


@attrs.frozen
class TemplarCoordination:
    name: str = "templar"

    def encode_peer_list(self, peer_list: PeerList, version: str) -> bytes:
        body = {
            "peers": list(peer_list.peers),
            "reserve_peers": list(peer_list.reserves),
            "initial_selection": peer_list.initial_selection,
            "sync_window": peer_list.window,
            "first_effective_window": peer_list.first_effective_window,
        }
        return json.dumps(body).encode()

    def decode_peer_list(
        self, data: bytes, version: str, validator_uid: int, hotkey: str
    ) -> PeerList:
        body = json_object(data)
        _exact_keys(body, PEER_LIST_KEYS, "peer list")
        peers, reserves = uid_list(body, "peers"), uid_list(body, "reserve_peers")
        if set(peers) & set(reserves):
            raise InvalidPeerList("a uid is both a peer and a reserve")
        initial = body["initial_selection"]
        if not isinstance(initial, bool):
            raise InvalidPeerList("initial_selection must be a boolean")
        window = uint_field(body, "sync_window")
        effective = uint_field(body, "first_effective_window")
        if effective < window:
            raise InvalidPeerList("first_effective_window is before sync_window")
        return PeerList(
            window=window,
            first_effective_window=effective,
            peers=peers,
            reserves=reserves,
            validator_uid=validator_uid,
            hotkey=hotkey,
            initial_selection=initial,
        )

    def encode_start_window(self, start_window: int, hotkey: str, version: str) -> bytes:
        return json.dumps({"start_window": start_window}).encode()

    def decode_start_window(self, data: bytes, version: str, hotkey: str) -> int:
        body = json_object(data)
        _exact_keys(body, START_WINDOW_KEYS, "start window")
        return uint_field(body, "start_window")


TEMPLAR = TemplarCoordination()
