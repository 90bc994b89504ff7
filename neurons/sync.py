"""Joining the network's trajectory: the newest checkpoint, then the aggregates since.

A neuron that starts cold, or whose own resume point is more than `sync_max_steps_behind`
windows old, loads the newest verified checkpoint from the validators' buckets and replays
the aggregated updates published since (when it can read an aggregator bucket). Saving is
the validator's job: every `checkpoint_frequency` steps, in the background.
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
    NoCheckpoint,
    aggregator_updates,
    catch_up,
    checkpoint_due,
    expected_layout,
    load_into,
    load_latest,
    validator_sources,
)
from core.compression import DenseCompressor
from ports import Bucket, Clock, Metagraph, ObjectStore, StoreOpener
from ports.scratch import Scratch

log = logging.getLogger(__name__)


def checkpoint_settings(version: str, frequency: int) -> CheckpointSettings:
    # One hashing thread per core (docs/checkpoints.md).
    return CheckpointSettings(
        version=version, checkpoint_frequency=frequency, hash_workers=max(1, os.cpu_count() or 1)
    )


async def load_network_checkpoint(
    model: nn.Module,
    *,
    metagraph: Metagraph,
    commitments: Mapping[int, Bucket],
    opener: StoreOpener,
    settings: CheckpointSettings,
    current_window: int,
) -> tuple[int, int] | None:
    """Load the checkpoint the network agrees on into `model`; (window, global_step) or None.

    `current_window` is the chain's: a checkpoint claiming a later window is never adopted.
    A candidate that is not a state of this model is skipped like a corrupt one, and the
    model is changed only by the one that is applied (core/checkpoints/latest.py, fit.py).
    """
    sources = validator_sources(metagraph, commitments, opener)
    if not sources:
        return None
    try:
        loaded = await load_latest(
            sources,
            settings,
            current_window=current_window,
            use=lambda candidate: load_into(model, candidate.state.model),
            expect_model=expected_layout(model),
            sections=("model",),  # a joiner needs the weights; nothing else is downloaded
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
        model: nn.Module,
        momentum: Mapping[str, torch.Tensor] | None,
        meta: CheckpointMeta,
    ) -> bool:
        if not checkpoint_due(meta.global_step, self.settings.checkpoint_frequency):
            return False
        state = CheckpointState(model=model.state_dict(), momentum=momentum)
        return await self._saver.start(state, meta)

    async def wait(self) -> None:
        await self._saver.wait()
