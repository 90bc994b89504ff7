"""Which peers are alive: a peer is active if it uploaded a gradient recently.

Activity is probed with HEAD requests on the gradient keys of the last `recent_windows`
windows, under a concurrency bound, every `active_check_interval` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from core import keys
from core.peers.evaluation import after_evaluation, choose_for_evaluation
from core.peers.settings import PeerSettings
from ports import Bucket, Chain, ChainError, Clock, StorageError, StoreOpener

log = logging.getLogger(__name__)


class ActivityTracker:
    """Keeps `active_peers`, `eval_peers` and `inactive_peers` current."""

    def __init__(
        self,
        opener: StoreOpener,
        clock: Clock,
        settings: PeerSettings,
        version: str,
        *,
        scheme: keys.KeyScheme = keys.NATIVE,
    ) -> None:
        self._opener = opener
        self._scheme = scheme
        self._clock = clock
        self._settings = settings
        self._version = keys.check_version(version)
        self.active_peers: frozenset[int] = frozenset()
        # uid -> windows waited since its last evaluation (see core/peers/evaluation.py);
        # a peer that stops being eligible leaves, and starts again at zero when it returns.
        self.eval_peers: dict[int, int] = {}
        # uid -> the window in which it dropped out of eval_peers.
        self.inactive_peers: dict[int, int] = {}

    async def _uploaded_recently(self, uid: int, bucket: Bucket, window: int) -> bool:
        try:
            store = self._opener.open(bucket)
        except Exception as exc:  # an untrusted bucket the opener refuses: not active
            log.info("activity check of uid %s: bucket refused: %s", uid, exc)
            return False
        oldest = max(window - self._settings.recent_windows + 1, 0)
        for w in range(window, oldest - 1, -1):
            try:
                if await store.head(self._scheme.gradient(w, uid, self._version)) is not None:
                    return True
            except StorageError as exc:
                log.info("activity check of uid %s window %s failed: %s", uid, w, exc)
        return False

    async def check(self, window: int, commitments: Mapping[int, Bucket]) -> frozenset[int]:
        """Probe every committed uid; returns (and stores) the set of active uids."""
        gate = asyncio.Semaphore(self._settings.activity_concurrency)

        async def probe(uid: int, bucket: Bucket) -> int | None:
            async with gate:
                return uid if await self._uploaded_recently(uid, bucket, window) else None

        found = await asyncio.gather(*(probe(u, b) for u, b in commitments.items()))
        self.active_peers = frozenset(u for u in found if u is not None)
        return self.active_peers

    def update_peers_with_buckets(
        self, window: int, commitments: Mapping[int, Bucket]
    ) -> list[int]:
        """Refresh eval_peers from buckets and activity.

        Returns the uids inactive for more than `reset_inactivity_windows`: they are forgotten
        here, and the caller should reset their scores.
        """
        current = set(commitments) & self.active_peers
        for uid in list(self.eval_peers):
            if uid not in current:
                del self.eval_peers[uid]
                self.inactive_peers.setdefault(uid, window)
        for uid in current:
            self.eval_peers.setdefault(uid, 0)
            self.inactive_peers.pop(uid, None)
        expired = sorted(
            uid
            for uid, since in self.inactive_peers.items()
            if window - since > self._settings.reset_inactivity_windows
        )
        for uid in expired:
            del self.inactive_peers[uid]
        return expired

    def for_evaluation(self, per_window: int, window: int, seed: int = 0) -> tuple[int, ...]:
        """The eval peers to score in `window`: the longest-waiting `per_window` of them."""
        return choose_for_evaluation(self.eval_peers, per_window, window, seed)

    def evaluated(self, uids: Iterable[int]) -> None:
        """Record one window's evaluations (a penalised peer counts as evaluated)."""
        self.eval_peers = after_evaluation(self.eval_peers, uids)

    async def run(
        self,
        chain: Chain,
        current_window: Callable[[], Awaitable[int]],
        stop: asyncio.Event,
        on_expired: Callable[[list[int]], None] | None = None,
    ) -> None:
        """Check activity every `active_check_interval` seconds until `stop` is set."""
        while not stop.is_set():
            try:
                commitments = await chain.bucket_commitments()
                window = await current_window()
                await self.check(window, commitments)
                expired = self.update_peers_with_buckets(window, commitments)
                if expired and on_expired is not None:
                    on_expired(expired)
            except ChainError as exc:
                log.warning("activity check skipped, chain unavailable: %s", exc)
            await self._clock.sleep(self._settings.active_check_interval)
