"""Peer-management parameters, with Templar's hparams names and defaults."""

from __future__ import annotations

import attrs
from attrs.validators import ge, gt


@attrs.frozen(kw_only=True)
class PeerSettings:
    gather_peer_count: int = attrs.field(default=15, validator=gt(0))
    reserve_peer_count: int = attrs.field(default=5, validator=ge(0))
    minimum_peers: int = attrs.field(default=5, validator=gt(0))
    # Every this many windows the worst peers are swapped for fresh candidates.
    peer_replacement_frequency: int = attrs.field(default=5, validator=gt(0))
    peers_to_replace: int = attrs.field(default=2, validator=ge(0))
    # A list selected at window w takes effect at w + margin, giving miners time to fetch it.
    peer_list_window_margin: int = attrs.field(default=2, validator=ge(0))
    active_check_interval: float = attrs.field(default=60.0, validator=gt(0))
    recent_windows: int = attrs.field(default=5, validator=gt(0))
    reset_inactivity_windows: int = attrs.field(default=25, validator=ge(0))
    activity_concurrency: int = attrs.field(default=10, validator=gt(0))
    # Share of the best score every candidate gets on top of its own, so new or unscored
    # peers keep a chance to be sampled.
    exploration_weight: float = attrs.field(default=0.1, validator=ge(0))
    max_peer_list_bytes: int = attrs.field(default=256 * 1024, validator=gt(0))

    def __attrs_post_init__(self) -> None:
        if self.minimum_peers > self.gather_peer_count:
            raise ValueError("minimum_peers cannot exceed gather_peer_count")
