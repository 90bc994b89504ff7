"""The miner: train, compress with error feedback, upload, gather peers, take the outer step."""

from __future__ import annotations

import logging
import math
import os

from core import debug
from core.compression import compress_with_feedback
from core.gather import gather
from core.keys import KeyKind
from core.peers import get_peer_list
from core.windows import Timing
from neurons.copier import copy_a_peer
from neurons.neuron import Neuron, Row
from neurons.training import apply_aggregate, window_gradient
from ports import StorageError

log = logging.getLogger(__name__)


class Miner(Neuron):
    role = "miner"

    async def _upload(self, data: bytes, window: int) -> str:
        """Put our gradient, or misbehave as `--faulty` asks (for demos and tests)."""
        assert self.uid is not None
        faulty = self.settings.faulty
        if faulty == "silent":
            return "withheld"
        if faulty == "garbage":
            data = os.urandom(len(data))
        if faulty == "copier":
            copied = await copy_a_peer(self, window)
            if copied is None:
                return "nothing_to_copy"
            data, faulty = copied[0], f"copy_of_{copied[1]}"
        # Not before the time window opens: in the templar profile that is the next window's
        # first block, which this waits for (neurons/neuron.py, `time_window`).
        tw = await self.time_window(window)
        if faulty == "late":
            wait = (tw.end - self.clock.now()).total_seconds() + self.hparams.grace_seconds + 0.2
            await self.clock.sleep(wait)
        stamp = await self.exchange.put(data, window, KeyKind.GRADIENT, self.uid)
        if faulty:
            return faulty
        # Judged as every peer will judge it: an operator sees at once why peers skip us.
        timing = tw.classify(stamp, self.exchange.settings.timestamp_resolution)
        if timing is not Timing.ON_TIME:
            log.warning(
                "our window-%d gradient is stamped %s, %s for its time window [%s, %s]: peers "
                "will skip it (docs/gather.md, time windows)",
                window,
                stamp.isoformat(),
                timing.value,
                tw.start.isoformat(),
                tw.end.isoformat(),
            )
            return timing.value
        return "ok"

    async def step(self, window: int) -> Row:
        assert self.uid is not None
        started = self.clock.monotonic()
        hp = self.hparams
        batches = await self.task.train_batches(self.uid, window, hp.inner_steps)
        loss, data, upload, upload_seconds = float("nan"), b"", "no_batches", 0.0
        if batches:
            loss, grads = window_gradient(self.task, self.model, batches)
            fed = compress_with_feedback(
                self.compressor, grads, self.error, decay=hp.momentum_decay
            )
            self.error = fed.residual
            data = self.encode_gradient(fed.compressed, window)
            upload_started = self.clock.monotonic()
            upload = await self._upload(data, window)
            upload_seconds = self.clock.monotonic() - upload_started
        else:
            # Nothing to send, but the network's step is still ours to take (below).
            log.warning("miner uid %s: no batch of window %d could be read", self.uid, window)

        metagraph, commitments = await self.peers_view()
        peer_list = await get_peer_list(
            self.opener,
            metagraph,
            commitments,
            window,
            hp.version,
            max_bytes=hp.peer_settings().max_peer_list_bytes,
            scheme=self.profile.keys,
            codec=self.profile.coordination,
        )
        if peer_list is not None:
            peers, reserves = list(peer_list.peers), list(peer_list.reserves)
        else:  # before the first peer list: everyone who uploads
            peers, reserves = self.miners_of(metagraph, commitments), []
        result = await gather(
            self.exchange,
            commitments,
            peers,
            window,
            self.expected,
            reserve_uids=reserves,
            time_window=await self.time_window(window),
            hotkeys=dict(zip(metagraph.uids, metagraph.hotkeys, strict=True)),
            verifier=self.verifier,
            settings=hp.gather_settings(),
            runner=self.runner,
            payloads=self.profile.payloads,
        )
        if result.aggregate is not None:
            apply_aggregate(self.training, result.aggregate)
            self.global_step += 1
        reported = await self._report(window, loss, len(data), result)
        cleaned = await self.clean_stale(window)
        return {
            "role": self.role,
            "uid": self.uid,
            "window": window,
            "train_loss": loss,
            "train_batches": len(batches),
            "upload": upload,
            "upload_bytes": len(data),
            "upload_seconds": upload_seconds,
            "peers": peers,
            "peer_list": peer_list is not None,
            "gathered": list(result.uids),
            "skipped": {str(u): r for u, r in result.skipped.items()},
            "success_rate": result.success_rate,
            "gather_seconds": result.seconds,
            "download_bytes": result.download_bytes,
            "applied": result.aggregate is not None,
            "global_step": self.global_step,
            "debug_report": reported,
            "cleaned": cleaned,
            "seconds": self.clock.monotonic() - started,
        }

    async def _report(self, window: int, loss: float, upload_bytes: int, result) -> bool:
        """Publish this window's debug report to our bucket and keep a local copy; a failure
        costs only the report (logged), never the window."""
        if not self.profile.debug_reports:
            return False
        assert self.uid is not None
        report = debug.DebugReport(
            window=window,
            uid=self.uid,
            step=self.global_step,
            loss=loss if math.isfinite(loss) else None,
            upload_bytes=upload_bytes,
            gather=debug.GatherSummary(
                asked=len(result.uids) + len(result.skipped),
                used=len(result.uids),
                skipped=len(result.skipped),
                seconds=result.seconds,
            ),
        )
        version, scheme = self.hparams.version, self.profile.keys
        try:
            for store in self.own_stores():
                await debug.post_debug(store, report, version, scheme)
        except StorageError as exc:
            log.warning("miner uid %s: debug report of window %d: %s", self.uid, window, exc)
            return False
        return True
