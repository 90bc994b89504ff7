"""The validator: evaluate every miner's gradient, score, select peers, publish, set weights.

Per window: stream the miners' gradients inside the time window, score each one by how much
one step along it lowers the loss on held-out batches, fold the peers of the current peer
list into the aggregate, publish it to the aggregator bucket and take the outer step; then
track activity, select and post the peer list for a later window, and set weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from core import debug, decoding
from core.aggregate import Aggregator, Normalisation
from core.compression import Checked, DenseCompressor
from core.decoding import DecodeRunner
from core.fetch import within
from core.peers import (
    ActivityTracker,
    PeerList,
    Selection,
    eligible,
    post_peer_list,
    post_start_window,
    select_peers,
)
from core.peers.evaluation import choose_for_evaluation
from neurons.copies import CopyJudge
from neurons.neuron import Neuron, Row
from neurons.scoring import Scores
from neurons.sync import CheckpointSaver
from neurons.training import apply_aggregate, loss_after_step, mean_loss, unit_normalised
from ports import ObjectStore, StorageError

log = logging.getLogger(__name__)


def relative_improvement(before: float, after: float) -> float:
    """(before - after) / before, clipped to [-1, 1]: one bad gradient cannot sink a score."""
    if not math.isfinite(after) or before <= 0:
        return -1.0
    return max(-1.0, min(1.0, (before - after) / before))


class Validator(Neuron):
    role = "validator"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        hp = self.hparams
        self.scores = Scores(hp.gradient_score_ma_alpha, hp.missing_gradient_penalty_score)
        self.tracker = ActivityTracker(
            self.opener, self.clock, hp.peer_settings(), hp.version, scheme=self.profile.keys
        )
        self.selection: Selection | None = None
        # first effective window -> peers, for the lists we published
        self.lists: dict[int, tuple[int, ...]] = {}
        self._last_activity_check: float | None = None
        self.saver = (
            CheckpointSaver(self.store, self.scratch, self.clock, self.checkpoints)
            if self.scratch is not None
            else None
        )
        self.aggregator_store = (
            self.opener.open(self.buckets.aggregator_write)
            if self.buckets.aggregator_write is not None
            else None
        )

    async def _read_start_window(self) -> int | None:
        """The published start window; the highest-stake validator publishes it when there is
        none yet (the next window), once: a restart finds it and never moves it."""
        found = await super()._read_start_window()
        if found is not None:
            return found
        metagraph = await self.chain.metagraph()
        validators = metagraph.validators()
        if not validators or validators[0] != self.uid:
            return None  # only the highest-stake validator publishes it; we wait like a miner
        start = await self.current_window() + 1
        await post_start_window(
            self.store,
            start,
            self.hotkey,
            self.hparams.version,
            scheme=self.profile.keys,
            codec=self.profile.coordination,
        )
        log.info("validator uid %s published start window %d", self.uid, start)
        return start

    def decode_runner(self, workers: int) -> DecodeRunner:
        # Each payload is evaluated right after its decode, on the loop: decodes go to
        # worker threads, where they overlap the fetches and that evaluation.
        return decoding.Pool(workers)

    def own_stores(self) -> list[ObjectStore]:
        # Peer lists and the start window live in our gradient bucket, aggregates in the
        # aggregator bucket; both grow every window unless swept.
        extra = [self.aggregator_store] if self.aggregator_store is not None else []
        return [*super().own_stores(), *extra]

    def peers_for(self, window: int) -> tuple[int, ...] | None:
        effective = [w for w in self.lists if w <= window]
        return self.lists[max(effective)] if effective else None

    async def _publish_aggregate(self, window: int, aggregate: dict) -> int:
        if self.aggregator_store is None:
            return 0
        data = self.encode(DenseCompressor().encode(aggregate), window)
        await self.aggregator_store.put(
            self.profile.keys.aggregator(window, self.hparams.version), data
        )
        return len(data)

    async def _track_activity(self, window: int, commitments: dict) -> None:
        now = self.clock.monotonic()
        interval = self.hparams.active_check_interval
        if self._last_activity_check is None or now - self._last_activity_check >= interval:
            await self.tracker.check(window, commitments)
            self._last_activity_check = now
        expired = self.tracker.update_peers_with_buckets(window, commitments)
        self.scores.reset(expired)

    async def _select_and_post(self, window: int, metagraph, commitments, miners) -> tuple:
        assert self.uid is not None
        hp = self.hparams
        pool = eligible(commitments, self.tracker.active_peers, metagraph.uids) & set(miners)
        candidates = {u: self.scores.values.get(u, 0.0) for u in pool}
        selection = select_peers(
            window, candidates, hp.peer_settings(), previous=self.selection, seed=hp.seed
        )
        if selection is None:
            return ()
        initial, self.selection = self.selection is None, selection
        effective = window + hp.peer_list_window_margin
        peer_list = PeerList(
            window=window,
            first_effective_window=effective,
            peers=selection.peers,
            reserves=selection.reserves,
            validator_uid=self.uid,
            hotkey=self.hotkey,
            initial_selection=initial,
        )
        await post_peer_list(
            self.store,
            peer_list,
            hp.version,
            scheme=self.profile.keys,
            codec=self.profile.coordination,
        )
        self.lists[effective] = selection.peers
        for old in [w for w in self.lists if w < window - hp.peer_list_window_margin]:
            del self.lists[old]
        return selection.peers

    def _to_evaluate(self, window: int, miners: list[int]) -> frozenset[int]:
        """This window's `uids_per_window` miners to score, the longest-waiting eval peers
        first (core/peers/evaluation.py); miners not yet seen active wait from zero."""
        waits = {u: self.tracker.eval_peers.get(u, 0) for u in miners}
        return frozenset(
            choose_for_evaluation(waits, self.hparams.uids_per_window, window, self.hparams.seed)
        )

    async def _read_reports(
        self, window: int, uids: frozenset[int], commitments: dict, seconds: float
    ) -> dict[str, dict]:
        """The debug reports the evaluated miners published for `window` (the one before
        ours: a miner posts its report after its gather), for the operator to set against our
        own measurements: those read within `seconds` (what is left of the gather's time), so
        that a miner's slow bucket may cost its report, never the window. A missing, late or
        invalid report is logged, never scored."""
        found: dict[str, dict] = {}
        if not self.profile.debug_reports or window < 0:
            return found

        async def one(uid: int) -> None:
            try:
                store = self.opener.open(commitments[uid])
                r = await debug.get_debug(
                    store, window, uid, self.hparams.version, self.profile.keys
                )
            except (StorageError, debug.InvalidDebug, ValueError) as exc:
                log.info("debug report of uid %s window %d: %s", uid, window, exc)
                return
            found[str(uid)] = {"window": r.window, "step": r.step, "loss": r.loss}

        async def every() -> bool:
            await asyncio.gather(*(one(u) for u in sorted(uids) if u in commitments))
            return True

        if await within(self.clock, every(), max(seconds, 0.0)) is None:
            log.warning(
                "debug reports of window %d: %d of %d read by the gather's deadline",
                window,
                len(found),
                len(uids),
            )
        return found

    async def step(self, window: int) -> Row:
        assert self.uid is not None
        started = self.clock.monotonic()
        hp = self.hparams
        metagraph, commitments = await self.peers_view()
        miners = self.miners_of(metagraph, commitments)
        listed = self.peers_for(window)
        contributors = set(miners if listed is None else listed)
        chosen = self._to_evaluate(window, miners)
        batches = await self.task.eval_batches(window, hp.eval_batches)
        if not batches:
            # Unscored, but aggregated and stepped: the model must follow the network.
            log.warning("validator: no held-out batch of window %d; nothing is scored", window)
        before = mean_loss(self.task, self.model, batches)
        # Adds on the loop wait there for the sum's background work, never blocking it.
        aggregator = Aggregator(
            self.compressor,
            self.shapes,
            normalisation=Normalisation(hp.normalisation),
            background=self.runner.threads,
        )
        evaluations: dict[str, float] = {}
        skipped: dict[str, str] = {}
        used: list[int] = []
        nbytes = 0
        gather_started = self.clock.monotonic()
        fetched_uids = [u for u in miners if u in contributors or u in chosen]
        peers = await self.stream_peers(window, fetched_uids, metagraph, commitments)
        # Who copied whom is known only once every upload's time is: scores and the fold wait
        # for the end of the stream, holding the compressed payloads of the aggregate's peers.
        judged = CopyJudge(hp.duplicate_threshold, self.compressor)
        held: dict[int, Checked] = {}
        async with contextlib.aclosing(peers):
            async for fetched in peers:
                uid = fetched.uid
                assert uid is not None
                nbytes += fetched.nbytes
                if not fetched.ok or fetched.payload is None:
                    reason = fetched.status.value
                    skipped[str(uid)] = f"{reason}: {fetched.reason}" if fetched.reason else reason
                    if uid in chosen:
                        self.scores.penalise(uid)
                    continue
                compressed = fetched.payload.compressed
                step = unit_normalised(self.compressor.decode(compressed))
                lr = self.training.learning_rate * hp.eval_lr_factor
                if batches and uid in chosen:
                    after = loss_after_step(self.task, self.model, step, lr, batches)
                    evaluations[str(uid)] = relative_improvement(before, after)
                judged.add(uid, compressed, fetched.meta)
                if uid in contributors:
                    held[uid] = fetched.payload.checked
        for uid, verdict in judged.verdicts().items():
            evaluations.pop(str(uid), None)
            held.pop(uid, None)
            skipped[str(uid)] = verdict.reason
            if verdict.penalised:
                self.scores.penalise(uid)
        for key, evaluation in evaluations.items():
            self.scores.update(int(key), evaluation)
        self.tracker.evaluated(chosen)
        reports = await self._read_reports(
            window - 1,
            chosen,
            commitments,
            hp.gather_timeout - (self.clock.monotonic() - gather_started),
        )
        for uid, checked in held.items():
            await aggregator.add(aggregator.prepare(checked, on_loop=True))
            used.append(uid)
        gather_seconds = self.clock.monotonic() - gather_started

        aggregate = aggregator.result() if len(used) >= hp.minimum_peers else None
        published, upload_seconds = 0, None
        if aggregate is not None:
            upload_started = self.clock.monotonic()
            published = await self._publish_aggregate(window, aggregate)
            upload_seconds = self.clock.monotonic() - upload_started
            apply_aggregate(self.training, aggregate)
            self.global_step += 1
        loss = mean_loss(self.task, self.model, batches)

        await self._track_activity(window, commitments)
        next_peers = await self._select_and_post(window, metagraph, commitments, miners)
        weights = {}
        if window % hp.windows_per_weights == 0:
            weights = self.scores.weights(hp.power_normalisation)
            if weights:
                uids = sorted(weights)
                await self.chain.set_weights(uids, [weights[u] for u in uids])
        checkpointed = False
        if self.saver is not None and aggregate is not None:
            # No momentum: error feedback is a miner's own residual, which no joiner adopts.
            checkpointed = await self.saver.maybe_save(
                self.training, None, self.checkpoint_meta(window)
            )
        cleaned = await self.clean_stale(window)
        return {
            "role": self.role,
            "uid": self.uid,
            "window": window,
            "loss": loss,
            "loss_before": before,
            "gather_seconds": gather_seconds,
            "bytes": nbytes,
            "asked": len(miners),
            "valid": len(evaluations),
            "success_rate": len(evaluations) / len(chosen) if chosen else 0.0,
            "evaluated": sorted(chosen),
            "reports": reports,
            "skipped": skipped,
            "evaluations": evaluations,
            "aggregated": used,
            "published_bytes": published,
            "upload_seconds": upload_seconds,
            "scores": {str(u): s for u, s in sorted(self.scores.values.items())},
            "weights": {str(u): w for u, w in sorted(weights.items())},
            "next_peers": list(next_peers),
            "active": sorted(self.tracker.active_peers),
            "checkpoint": checkpointed,
            "cleaned": cleaned,
            "seconds": self.clock.monotonic() - started,
        }

    async def close(self) -> None:
        if self.saver is not None:
            await self.saver.wait()  # a checkpoint upload in flight completes (or fails) whole
        await super().close()
        if self.aggregator_store is not None:
            await self.aggregator_store.close()
