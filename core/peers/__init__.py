"""Peer management: activity tracking, selection and published peer lists."""

from core.peers.activity import ActivityTracker
from core.peers.peer_list import (
    InvalidPeerList,
    PeerList,
    get_peer_list,
    get_start_window,
    parse_peer_list,
    post_peer_list,
    post_start_window,
)
from core.peers.selection import Selection, eligible, select_peers, weighted_sample
from core.peers.settings import PeerSettings

__all__ = [
    "ActivityTracker",
    "InvalidPeerList",
    "PeerList",
    "PeerSettings",
    "Selection",
    "eligible",
    "get_peer_list",
    "get_start_window",
    "parse_peer_list",
    "post_peer_list",
    "post_start_window",
    "select_peers",
    "weighted_sample",
]
