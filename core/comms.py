"""`Comms`: the seed's operations under the names Templar's `tplr.comms.Comms` gives them.

A facade for a neuron written against Templar's API: each method hands over to the service
that does the work (core/exchange.py, core/gather.py, core/peers/, core/checkpoints/, the
Chain port) with this node's profile, bucket and version filled in; nothing here decides.
docs/templar.md ("Migrating from tplr.comms.Comms") maps each call, and says what stays
different on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs

from core import decoding, peers
from core.checkpoints import (
    Checkpointer,
    CheckpointMeta,
    CheckpointSettings,
    CheckpointState,
    Latest,
    Loaded,
    Manifest,
    get_latest,
    load_latest,
    validator_sources,
)
from core.codec import Expected
from core.exchange import Exchange, Fetched
from core.gather import GatherResult, gather
from core.keys import KeyKind
from core.profiles import NATIVE, ProtocolProfile
from ports import Bucket, Chain, ObjectStore

T = TypeVar("T")


@attrs.define(kw_only=True)
class Comms:
    exchange: Exchange
    chain: Chain
    hotkey: str
    profile: ProtocolProfile = NATIVE
    tracker: peers.ActivityTracker | None = None
    checkpointer: Checkpointer | None = None
    checkpoint_settings: CheckpointSettings | None = None

    @property
    def version(self) -> str:
        return self.exchange.version

    # Objects: put, get, gather -----------------------------------------------------------

    async def put(
        self,
        data: bytes,
        window: int,
        key: KeyKind,
        uid: int | None = None,
        *,
        local: bool = False,
    ) -> datetime:
        """Write one encoded object of ours; its last_modified once durable."""
        put = self.exchange.put_local if local else self.exchange.put
        return await put(data, window, key, uid)

    async def get(
        self,
        bucket: Bucket,
        window: int,
        key: KeyKind,
        decode: Callable[[int, bytes], T] | None = None,
        *,
        local: bool = False,
        runner: decoding.DecodeRunner | None = None,
        **options: Any,
    ) -> Fetched[Any]:
        """One peer's object of `window`, size-bounded and time-checked (options: those of
        `Exchange.get_from`: uid, time_window, max_bytes, timeout), then, with `decode`,
        decoded as `decode(uid, data)` on `runner` (default: right here): a refusal is the
        record's INVALID status and reason."""
        if local:
            fetched = await self.exchange.get_local(window, key, **options)
        else:
            fetched = await self.exchange.get(bucket, window, key, **options)
        if decode is None or not fetched.ok:
            return fetched
        return await decoding.decode(runner or decoding.Synchronous(), decode, fetched)

    async def gather(
        self,
        buckets: Mapping[int, Bucket],
        uids: Iterable[int],
        window: int,
        expected: Expected,
        **options: Any,
    ) -> GatherResult:
        """`core.gather.gather`: reserve_uids, time_window, hotkeys, verifier, settings as
        there; Templar's `gather_with_reserve` is this call with `reserve_uids`."""
        return await gather(self.exchange, buckets, uids, window, expected, **options)

    # Coordination: peer lists, start window, activity ------------------------------------

    async def post_peer_list(self, peer_list: peers.PeerList) -> None:
        await peers.post_peer_list(
            self.exchange.store, peer_list, self.version, **self._coordination()
        )

    async def get_peer_list(self, window: int, **options: Any) -> peers.PeerList | None:
        """The list in effect at `window` from the highest-stake validator with a valid one."""
        metagraph, commitments = await self.chain.metagraph(), await self.chain.bucket_commitments()
        return await peers.get_peer_list(
            self.exchange.opener,
            metagraph,
            commitments,
            window,
            self.version,
            **self._coordination(),
            **options,
        )

    async def post_start_window(self, start_window: int) -> None:
        await peers.post_start_window(
            self.exchange.store, start_window, self.hotkey, self.version, **self._coordination()
        )

    async def get_start_window(self, not_after: int | None = None) -> int | None:
        metagraph, commitments = await self.chain.metagraph(), await self.chain.bucket_commitments()
        return await peers.get_start_window(
            self.exchange.opener,
            metagraph,
            commitments,
            self.version,
            not_after=not_after,
            **self._coordination(),
        )

    async def track_active_peers(self, window: int) -> frozenset[int]:
        """One activity check of every committed uid (Templar loops it; so does
        `ActivityTracker.run`)."""
        return await self._tracker().check(window, await self.chain.bucket_commitments())

    async def update_peers_with_buckets(self, window: int) -> list[int]:
        """Refresh eval and inactive peers; the uids whose scores the caller should reset."""
        commitments = await self.chain.bucket_commitments()
        return self._tracker().update_peers_with_buckets(window, commitments)

    async def try_commit(self, bucket: Bucket) -> bool:
        """Commit our read bucket on chain when it differs from what is there."""
        return await self.chain.commit_bucket(bucket)

    # Checkpoints ------------------------------------------------------------------------

    async def save_checkpoint(self, state: CheckpointState, meta: CheckpointMeta) -> Manifest:
        if self.checkpointer is None:
            raise RuntimeError("this Comms has no checkpointer (no scratch space given)")
        return await self.checkpointer.save(state, meta)

    async def get_latest_checkpoint(
        self, current_window: int, *, local: ObjectStore | None = None
    ) -> Latest | None:
        """The checkpoint a load would take first: highest-stake validator, never newer
        than `current_window`."""
        return await get_latest(
            await self._sources(local), self._settings(), current_window=current_window
        )

    async def load_checkpoint(
        self, current_window: int, *, local: ObjectStore | None = None, **options: Any
    ) -> Loaded:
        """Load (options: those of `load_latest`: use, expect_model, sections, ...) the first
        candidate that verifies; `NoCheckpoint` lists every skipped one and why."""
        return await load_latest(
            await self._sources(local),
            self._settings(),
            current_window=current_window,
            **options,
        )

    # ------------------------------------------------------------------------------------

    def _coordination(self) -> dict[str, Any]:
        return {"scheme": self.profile.keys, "codec": self.profile.coordination}

    def _tracker(self) -> peers.ActivityTracker:
        if self.tracker is None:
            raise RuntimeError("this Comms has no activity tracker")
        return self.tracker

    def _settings(self) -> CheckpointSettings:
        if self.checkpoint_settings is None:
            raise RuntimeError("this Comms has no checkpoint settings")
        return self.checkpoint_settings

    async def _sources(self, local: ObjectStore | None) -> Sequence:
        metagraph, commitments = await self.chain.metagraph(), await self.chain.bucket_commitments()
        return validator_sources(metagraph, commitments, self.exchange.opener, local=local)
