"""What miners and validators share: identity, the window clock, the model, the run loop.

A neuron is built from ports (chain, store opener, clock) and its buckets; it never
constructs an adapter itself (neurons/container.py does). `step(window)` does one window's
work and returns the row reported for it; `run` calls it once per window until stopped.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from core import clock_skew, codec, decoding
from core.checkpoints import CheckpointMeta
from core.codec import Expected, Payload, PayloadMeta
from core.compression import Compressed, TopKCompressor
from core.decoding import DecodeRunner
from core.exchange import Exchange, Fetched
from core.gather import stream
from core.janitor import sweep
from core.peers import get_start_window
from core.profiles import NATIVE, ProtocolProfile
from core.warmup import warm_up
from core.windows import TimeWindow, window_of
from neurons import resume, sync
from neurons.buckets import NeuronBuckets
from neurons.config import HParams, NeuronSettings
from neurons.task import TaskContext, Training, load_task
from neurons.training import apply_aggregate
from ports import (
    Bucket,
    Chain,
    ChainError,
    Clock,
    Metagraph,
    ObjectStore,
    StorageError,
    StoreOpener,
)
from ports.scratch import Scratch
from ports.signing import Signer, Verifier

log = logging.getLogger(__name__)
Row = dict[str, Any]


class NotRegistered(RuntimeError):
    pass


class Neuron:
    role = "neuron"

    def __init__(
        self,
        hparams: HParams,
        settings: NeuronSettings,
        *,
        chain: Chain,
        opener: StoreOpener,
        clock: Clock,
        buckets: NeuronBuckets,
        hotkey: str,
        signer: Signer,
        verifier: Verifier,
        on_row: Callable[[Row], None] | None = None,
        timestamp_resolution: float = 1.0,
        decode_workers: int = 2,
        runner: DecodeRunner | None = None,
        scratch: Scratch | None = None,
        aggregates: ObjectStore | None = None,
        profile: ProtocolProfile = NATIVE,
        task: Training | None = None,
        local: ObjectStore | None = None,
    ) -> None:
        self.hparams = hparams
        # Whose names, coordination bodies and time windows we speak (core/profiles.py).
        self.profile = profile
        self.settings = settings
        self.chain = chain
        self.opener = opener
        # Deadlines are judged in the network's time: the local clock less its measured offset.
        self.clock = clock_skew.NetworkClock(clock)
        self.buckets = buckets
        self.hotkey = hotkey
        # We sign what we upload with our hotkey, and take a peer's payload only when the
        # hotkey the chain lists for its uid signed it (neurons/container.py picks both).
        self.signer = signer
        self.verifier = verifier
        self.on_row = on_row
        # The background checkpoint saver needs scratch files; without them a neuron neither
        # saves nor loads checkpoints.
        self.scratch = scratch
        # Where the network's aggregates can be read, for catch-up (None: no catch-up).
        self.aggregates = aggregates
        # Our own directory bucket (the seed's local storage): copies of what we publish for
        # the operator, swept by the same retention as the remote buckets.
        self.local = local
        self.checkpoints = sync.checkpoint_settings(hparams.version, hparams.checkpoint_frequency)
        self.store = opener.open(buckets.gradients_write)
        self.exchange = Exchange(
            self.store,
            opener,
            self.clock,
            hparams.version,
            hparams.exchange_settings(timestamp_resolution=timestamp_resolution),
            scheme=profile.keys,
        )
        # The runner loads the task before any bucket is touched (neurons/runner.py); a
        # neuron built without one trains the hparams' task with no dataset bucket.
        self.training = task or load_task(
            TaskContext(hparams=hparams, device=settings.device, clock=clock)
        )
        self.task = self.training.task
        self.model = self.training.model
        self.compressor = TopKCompressor(
            hparams.topk_params(), transition_until=hparams.index_code_transition_until
        )
        # Compiling a kernel inside the first gathers would miss their deadlines: done here,
        # before any window, and once compiled (make's install, the localnet) a cache load.
        # During an index-code transition the other code's payloads are gathered too.
        older = self.compressor.transition()
        warm_up([self.compressor.params] + ([older[0].params] if older else []))
        self.shapes = {n: tuple(p.shape) for n, p in self.model.named_parameters()}
        self.expected = Expected(
            version=hparams.version,
            codec=self.compressor,
            shapes=self.shapes,
            # Native payloads are signed by their uploader's hotkey; Templar's carry none.
            require_signature=profile.payloads.signed,
        )
        # Where peers' payloads are decoded (tests inject `decoding.Synchronous()`).
        self.runner = runner or self.decode_runner(decode_workers)
        self.uid: int | None = None
        self.global_step = 0
        self.last_window: int | None = None
        self.error: dict[str, torch.Tensor] | None = None
        self._committed = False
        self.finality_lag = 0
        self.failed_windows = 0
        self._time_window: tuple[int, TimeWindow] | None = None
        # The network's first window, as the highest-stake validator published it.
        self.start_window: int | None = None
        self._windows_since_clock_check = 0

    def decode_runner(self, workers: int) -> DecodeRunner:
        """The runner this neuron's gathers want (core.decoding.runner_for)."""
        max_bytes = self.hparams.fetch_settings().max_bytes
        return decoding.runner_for(
            self.expected, self.settings.device, max_bytes=max_bytes, workers=workers
        )

    # Identity and chain --------------------------------------------------------------

    @property
    def resume_path(self) -> Path:
        safe = re.sub(r"[^0-9A-Za-z._-]", "_", self.hotkey)[:64]
        return Path(self.settings.state_dir) / f"{self.role}-{safe}.safetensors"

    async def setup(self) -> None:
        """Find our uid, commit our read bucket once, pick up where we left off."""
        metagraph = await self.chain.metagraph()
        self.uid = metagraph.uid(self.hotkey)
        if self.uid is None:
            raise NotRegistered(f"hotkey {self.hotkey} is not registered on this subnet")
        if not self._committed:
            await self.chain.commit_bucket(self.buckets.gradients_read)
            self._committed = True
        await self.check_time()
        restored = resume.load(self.resume_path, self.training)
        if restored is not None:
            point, self.error = restored
            self.global_step, self.last_window = point.global_step, point.window
            log.info("%s resumed at window %d, step %d", self.role, point.window, point.global_step)
        await self.sync_to_network()

    async def sync_to_network(self) -> None:
        """Cold or far behind: load the newest checkpoint, then replay aggregates since."""
        hp = self.hparams
        target = await self.current_window() - 1
        behind = None if self.last_window is None else target - self.last_window
        if self.scratch is not None and (behind is None or behind > hp.sync_max_steps_behind):
            metagraph, commitments = await self.peers_view()
            loaded = await sync.load_network_checkpoint(
                self.training,
                metagraph=metagraph,
                commitments=commitments,
                opener=self.opener,
                settings=self.checkpoints,
                current_window=target + 1,
            )
            if loaded is not None:
                self.last_window, self.global_step = loaded
                self.error = None  # the buffer belonged to another trajectory
        if self.aggregates is not None and self.last_window is not None:
            start = self.last_window
            self.last_window = await sync.replay_aggregates(
                self.model,
                self.aggregates,
                version=hp.version,
                start_window=start,
                target_window=target,
                max_behind=hp.sync_max_steps_behind,
                apply=lambda update: apply_aggregate(self.training, update),
                scheme=self.profile.keys,
            )
            self.global_step += self.last_window - start

    def _meta(self, window: int) -> PayloadMeta:
        assert self.uid is not None
        return PayloadMeta(
            window=window,
            uid=self.uid,
            hotkey=self.hotkey,
            global_step=self.global_step,
            version=self.hparams.version,
        )

    def encode(self, compressed: Compressed, window: int) -> bytes:
        """`compressed` as our native payload of `window`, signed with our hotkey (the
        validator's aggregates are native in every profile)."""
        return codec.encode(compressed, self._meta(window), signer=self.signer)

    def encode_gradient(self, compressed: Compressed, window: int) -> bytes:
        """Our gradient of `window` in the profile's payload format."""
        payloads = self.profile.payloads
        return payloads.encode(compressed, self.compressor, self._meta(window), self.signer)

    def checkpoint_meta(self, window: int) -> CheckpointMeta:
        assert self.uid is not None
        return CheckpointMeta(
            window=window, global_step=self.global_step, uid=self.uid, hotkey=self.hotkey
        )

    async def check_time(self) -> None:
        """Measure the clock offset (store and chain) and the finality lag; warn on either."""
        local = self.clock.local
        store = await clock_skew.store_offset(
            self.store, local, resolution=max(self.exchange.settings.timestamp_resolution, 0.001)
        )
        chain = await clock_skew.chain_offset(
            local, self.chain, block_time=self.settings.block_time
        )
        self.clock.apply(clock_skew.estimate(store, chain))
        try:
            self.finality_lag = max(
                0, await self.chain.head_block() - await self.chain.current_block()
            )
        except ChainError as exc:
            log.info("finality lag not measured: %s", exc)
            return
        # We learn that a window began only once its first block is final: that much of the
        # time window is gone before a miner starts (docs/gather.md, "Clock skew").
        late = self.finality_lag * self.settings.block_time
        if (
            late + self.exchange.settings.timestamp_resolution
            >= self.hparams.time_window_delta_seconds
        ):
            log.warning(
                "finalised blocks trail the head by %d (%.0f s): with time_window_delta_seconds "
                "= %g no upload can be on time; raise it or follow the head",
                self.finality_lag,
                late,
                self.hparams.time_window_delta_seconds,
            )

    async def wait_for_start_window(self, stop: asyncio.Event) -> int | None:
        """The network's start window, once a validator has published it (None if stopped).

        Read, never set, by miners; the highest-stake validator posts it (`Validator`).
        """
        logged = False
        while not stop.is_set():
            found = await self._read_start_window()
            if found is not None:
                self.start_window = found
                return found
            if not logged:
                log.info("%s: waiting for a validator to publish the start window", self.role)
                logged = True
            await self._sleep(self.settings.block_poll_interval, stop)
        return None

    async def _read_start_window(self) -> int | None:
        try:
            metagraph, commitments = await self.peers_view()
        except ChainError as exc:
            log.warning("%s: cannot read the metagraph: %s", self.role, exc)
            return None
        return await get_start_window(
            self.opener,
            metagraph,
            commitments,
            self.hparams.version,
            not_after=await self.current_window() + 1,
            scheme=self.profile.keys,
            codec=self.profile.coordination,
        )

    async def current_window(self) -> int:
        return window_of(await self.chain.current_block(), self.hparams.blocks_per_window)

    async def time_window(self, window: int) -> TimeWindow:
        """The time window of `window`'s gradients, once the block that opens it exists
        (in the templar profile, the first block of the next window: waited for here)."""
        if self._time_window is None or self._time_window[0] != window:
            anchor = self.profile.anchor_block(window, self.hparams.blocks_per_window)
            while await self.chain.current_block() < anchor:
                await self.clock.sleep(self.settings.block_poll_interval)
            start = await self.chain.block_timestamp(anchor)
            tw = self.profile.time_window(start, self.hparams.time_window_delta_seconds)
            self._time_window = (window, tw)
        return self._time_window[1]

    async def stream_peers(
        self,
        window: int,
        uids: list[int],
        metagraph: Metagraph,
        commitments: dict[int, Bucket],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[Fetched[Payload]]:
        """`core.gather.stream` over `uids`' gradients of `window`, signed by their hotkeys,
        within the gather deadline (or `timeout` seconds)."""
        limit = self.profile.payloads.size_limit(self.expected)
        fetch = attrs.evolve(self.hparams.fetch_settings(), max_bytes=limit)
        if timeout is not None:
            fetch = attrs.evolve(fetch, timeout=timeout)
        return stream(
            self.exchange,
            commitments,
            uids,
            window,
            self.expected,
            hotkeys=dict(zip(metagraph.uids, metagraph.hotkeys, strict=True)),
            verifier=self.verifier,
            time_window=await self.time_window(window),
            settings=fetch,
            runner=self.runner,
            payloads=self.profile.payloads,
        )

    async def peers_view(self) -> tuple[Metagraph, dict[int, Bucket]]:
        return await self.chain.metagraph(), await self.chain.bucket_commitments()

    @staticmethod
    def miners_of(metagraph: Metagraph, commitments: dict[int, Bucket]) -> list[int]:
        """Committed uids without a validator permit: the ones that upload gradients."""
        permits = dict(zip(metagraph.uids, metagraph.validator_permits, strict=True))
        return sorted(u for u in commitments if u in permits and not permits[u])

    async def next_window(self, stop: asyncio.Event) -> int | None:
        """The next window to work on, once it has begun; None when asked to stop.

        The first window is the next one to begin, never the one in progress: joining half
        way through would upload too late for its time window.
        """
        target = None if self.last_window is None else self.last_window + 1
        if self.start_window is not None and target is not None:
            target = max(target, self.start_window)
        while not stop.is_set():
            try:
                now = await self.current_window()
            except ChainError as exc:  # an unreachable chain costs time, not the process
                log.warning("%s: cannot read the chain's block height: %s", self.role, exc)
                await self._sleep(self.settings.block_poll_interval, stop)
                continue
            if target is None:
                target = max(now + 1, self.start_window or 0)
            if now >= target:
                return now
            await self._sleep(self.settings.block_poll_interval, stop)
        return None

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleeper, stopper):
            task.cancel()

    # Housekeeping --------------------------------------------------------------------

    def own_stores(self) -> list[ObjectStore]:
        """The buckets we write to, remote and local, which the janitor keeps bounded."""
        return [self.store] + ([self.local] if self.local is not None else [])

    async def clean_stale(self, window: int) -> int:
        """Delete what retention lets go from each of our buckets (see core/janitor.py)."""
        policy = self.hparams.retention_policy()
        cleaned = 0
        for store in self.own_stores():
            try:
                swept = await sweep(
                    store, window, policy, settings=self.checkpoints, scheme=self.profile.keys
                )
                cleaned += swept.count
            except StorageError as exc:
                log.warning("stale cleanup of %s failed: %s", store.name, exc)
        return cleaned

    def save_resume(self, window: int) -> None:
        resume.save(
            self.resume_path,
            self.training,
            self.error,
            resume.ResumePoint(window=window, global_step=self.global_step),
        )

    # The loop ------------------------------------------------------------------------

    async def step(self, window: int) -> Row:
        raise NotImplementedError

    async def run(self, stop: asyncio.Event, max_windows: int | None = None) -> int:
        """Work window after window until `stop` is set; returns windows completed.

        A window that has begun is finished before stopping (uploads are atomic, so a hard
        kill tears nothing either; it only loses the window in progress).
        """
        await self.setup()
        if await self.wait_for_start_window(stop) is None:
            await self.close()
            return 0
        if self.on_row is not None:
            self.on_row({"event": "ready", "role": self.role, "uid": self.uid})
        done = 0
        try:
            while not stop.is_set() and (max_windows is None or done < max_windows):
                window = await self.next_window(stop)
                if window is None:
                    break
                try:
                    row = await self.step(window)
                except Exception as exc:  # a window's failure must not end the process
                    self._window_failed(window, exc)
                    done += 1
                    continue
                self.last_window = window
                self.save_resume(window)
                if self.on_row is not None:
                    lag = await self._window_lag(window)
                    self.on_row({"event": "window", **row, "window_lag": lag})
                done += 1
                await self._recheck_time()
        finally:
            await self.close()
        return done

    def _window_failed(self, window: int, exc: Exception) -> None:
        """An upload, gather or chain failure costs its window: logged, counted, and the next
        window runs (`last_window` stays, so nothing is marked done that was not)."""
        self.failed_windows += 1
        reason = f"{type(exc).__name__}: {exc}"
        log.warning(
            "%s uid %s: window %d failed, going on: %s", self.role, self.uid, window, reason
        )
        log.debug("window %d failed", window, exc_info=exc)
        if self.on_row is not None:
            self.on_row(
                {
                    "event": "window_failed",
                    "role": self.role,
                    "uid": self.uid,
                    "window": window,
                    "reason": reason,
                    "failed_windows": self.failed_windows,
                }
            )

    async def _window_lag(self, window: int) -> int | None:
        """How many windows the chain is past the one just finished (0: on time); None when
        the chain cannot say. Reported, never fatal: the window's work is done."""
        try:
            return await self.current_window() - window
        except ChainError:
            return None

    async def _recheck_time(self) -> None:
        self._windows_since_clock_check += 1
        if self._windows_since_clock_check >= self.settings.clock_check_windows:
            self._windows_since_clock_check = 0
            try:
                await self.check_time()
            except Exception as exc:  # a measurement, not the window's work: keep the last
                log.warning("%s: clock check failed: %s", self.role, exc)

    async def close(self) -> None:
        self.runner.close()
        await self.exchange.flush()
        await self.store.close()
        await self.training.close()
