"""Choosing which peers to gather from: pure functions, reproducible with a seed.

Candidates must have a bucket, a chain commitment and recent activity (see `eligible`).
Sampling is weighted by score and without replacement (Efraimidis-Spirakis keys), so a
better-scored peer is more likely, never certain, to be chosen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping

import attrs

from core.peers.settings import PeerSettings


@attrs.frozen
class Selection:
    window: int
    peers: tuple[int, ...]
    reserves: tuple[int, ...]


def eligible(
    commitments: Iterable[int], active: Iterable[int], registered: Iterable[int]
) -> frozenset[int]:
    """Uids that have a committed bucket, uploaded recently and are on the metagraph."""
    return frozenset(commitments) & frozenset(active) & frozenset(registered)


def weighted_sample(
    candidates: Mapping[int, float], k: int, rng: random.Random, exploration: float
) -> list[int]:
    """Up to `k` distinct uids, drawn with probability rising with score."""
    if k <= 0 or not candidates:
        return []
    best = max((max(s, 0.0) for s in candidates.values()), default=0.0)
    floor = exploration * best if best > 0 else 1.0
    keyed = []
    for uid in sorted(candidates):
        weight = max(candidates[uid], 0.0) + floor
        if not math.isfinite(weight) or weight <= 0:
            weight = floor
        # Efraimidis-Spirakis: the k largest u^(1/w) are a weighted sample without replacement.
        # A zero weight (no exploration, or a floor that underflowed next to a denormal best
        # score) ranks last: u^(1/0) is 0.
        u = math.log(rng.random() or 1e-300)
        keyed.append((u / weight if weight > 0 else -math.inf, uid))
    keyed.sort(reverse=True)
    return [uid for _, uid in keyed[:k]]


def is_replacement_window(window: int, settings: PeerSettings) -> bool:
    return window % settings.peer_replacement_frequency == 0


def select_peers(
    window: int,
    candidates: Mapping[int, float],
    settings: PeerSettings,
    *,
    previous: Selection | None = None,
    seed: int = 0,
) -> Selection | None:
    """Peers and reserves for `window`, or None when fewer than minimum_peers are available.

    `candidates` maps each eligible uid to its score. Peers of `previous` that are still
    eligible are kept; on replacement windows the `peers_to_replace` worst of them make room
    for new draws. Free places are filled by weighted sampling; reserves are drawn from what
    is left.
    """
    rng = random.Random(f"{seed}:{window}")
    kept: list[int] = []
    dropped: list[int] = []
    if previous is not None:
        kept = [uid for uid in previous.peers if uid in candidates][: settings.gather_peer_count]
        if is_replacement_window(window, settings) and kept:
            pool = len(candidates) - len(kept)
            drop = min(settings.peers_to_replace, pool, len(kept))
            if drop > 0:
                dropped = sorted(kept, key=lambda u: (candidates[u], u))[:drop]
                kept = [u for u in kept if u not in dropped]
    remaining = {u: s for u, s in candidates.items() if u not in kept}
    newcomers = {u: s for u, s in remaining.items() if u not in dropped}
    fresh = weighted_sample(
        newcomers, settings.gather_peer_count - len(kept), rng, settings.exploration_weight
    )
    shortfall = settings.gather_peer_count - len(kept) - len(fresh)
    if shortfall > 0 and dropped:
        # Replaced peers come back only when there is nobody else to take their place.
        back = {u: candidates[u] for u in dropped}
        fresh += weighted_sample(back, shortfall, rng, settings.exploration_weight)
    peers = tuple(kept + fresh)
    if len(peers) < settings.minimum_peers:
        return None
    left = {u: s for u, s in remaining.items() if u not in fresh}
    reserves = tuple(
        weighted_sample(left, settings.reserve_peer_count, rng, settings.exploration_weight)
    )
    return Selection(window=window, peers=peers, reserves=reserves)
