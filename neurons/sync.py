"""Joining the network's trajectory: the newest checkpoint, then the aggregates since.

A neuron that starts cold, or whose own resume point is more than `sync_max_steps_behind`
windows old, loads the newest verified checkpoint from the validators' buckets (model,
optimizer and scheduler, all checked against the local ones before any is applied) and
replays the aggregated updates published since (when it can read an aggregator bucket)
through the same outer step a neuron that never left took. Saving is the validator's job:
every `checkpoint_frequency` steps, in the background.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from core import keys
from core.checkpoints import (
    BackgroundSaver,
    Checkpointer,
    CheckpointMeta,
    CheckpointSettings,
    CheckpointState,
    Loaded,
    NoCheckpoint,
    aggregator_updates,
    apply_training_state,
    catch_up,
    checkpoint_due,
    expected_layout,
    load_latest,
    optimizer_headers,
    scheduler_headers,
    validator_sources,
)
from core.compression import DenseCompressor
from neurons.task import Training
from ports import Bucket, Clock, Metagraph, ObjectStore, StoreOpener
from ports.scratch import Scratch

log = logging.getLogger(__name__)


def checkpoint_settings(version: str, frequency: int) -> CheckpointSettings:
    # One hashing thread per core (docs/checkpoints.md).
    return CheckpointSettings(
        version=version, checkpoint_frequency=frequency, hash_workers=max(1, os.cpu_count() or 1)
    )


# A joiner downloads what it adopts and nothing else a hostile manifest lists: the
# momentum section is a miner's own error feedback, never another's.
ADOPTED = ("model", "optimizer", "scheduler")


def adopt(training: Training, loaded: Loaded) -> None:
    """Apply a checkpoint's model, optimizer and scheduler to `training`: all three, or
    (a `Mismatch` saying why) none."""
    state = loaded.state
    apply_training_state(
        training.model,
        training.optimizer,
        training.scheduler,
        model_state=state.model,
        optimizer_state=state.optimizer,
        scheduler_state=state.scheduler,
    )


async def load_network_checkpoint(
    training: Training,
    *,
    metagraph: Metagraph,
    commitments: Mapping[int, Bucket],
    opener: StoreOpener,
    settings: CheckpointSettings,
    current_window: int,
) -> tuple[int, int] | None:
    """Load the checkpoint the network agrees on into `training`; (window, global_step) or
    None.

    `current_window` is the chain's: a checkpoint claiming a later window is never adopted.
    A candidate that is not a state of this model, optimizer and scheduler (or lacks one of
    them) is skipped like a corrupt one, and `training` is changed only by the one that is
    applied (core/checkpoints/latest.py, fit.py, optim_fit.py).
    """
    sources = validator_sources(metagraph, commitments, opener)
    if not sources:
        return None
    try:
        loaded = await load_latest(
            sources,
            settings,
            current_window=current_window,
            use=lambda candidate: adopt(training, candidate),
            expect_model=expected_layout(training.model),
            expect_headers={
                "optimizer": optimizer_headers(training.optimizer),
                "scheduler": scheduler_headers(training.scheduler),
            },
            sections=ADOPTED,
        )
    except NoCheckpoint as exc:
        log.info("no network checkpoint yet: %s", exc)
        return None
    return loaded.window, loaded.global_step


async def replay_aggregates(
    model: nn.Module,
    aggregator: ObjectStore,
    *,
    version: str,
    start_window: int,
    target_window: int,
    max_behind: int,
    apply: Callable[[Mapping[str, torch.Tensor]], None],
    scheme: keys.KeyScheme = keys.NATIVE,
) -> int:
    """Apply (`apply`: the task's outer step) the published aggregates of
    start_window+1 .. target_window; the last applied."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    result = await catch_up(
        start_window=start_window,
        target_window=target_window,
        sync_max_steps_behind=max_behind,
        fetch=aggregator_updates(
            aggregator,
            version=version,
            compressor=DenseCompressor(),
            shapes=shapes,
            scheme=scheme,
        ),
        apply=lambda _window, update: apply(update),
    )
    log.info("catch-up: %s", result.message)
    return result.last_window


class CheckpointSaver:
    """The validator's periodic checkpoint, uploaded in the background."""

    def __init__(
        self, store: ObjectStore, scratch: Scratch, clock: Clock, settings: CheckpointSettings
    ) -> None:
        self.settings = settings
        self._saver = BackgroundSaver(Checkpointer(store, scratch, clock, settings))

    async def maybe_save(
        self,
        training: Training,
        momentum: Mapping[str, torch.Tensor] | None,
        meta: CheckpointMeta,
    ) -> bool:
        """The full training state when `meta.global_step` is due: model, optimizer,
        scheduler, and `momentum` (error feedback) when the saver has one."""
        if not checkpoint_due(meta.global_step, self.settings.checkpoint_frequency):
            return False
        state = CheckpointState(
            model=training.model.state_dict(),
            optimizer=training.optimizer.state_dict(),
            scheduler=training.scheduler.state_dict(),
            momentum=momentum,
        )
        return await self._saver.start(state, meta)

    async def wait(self) -> None:
        await self._saver.wait()
