"""Running one neuron process: wiring, signals, the per-window event lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

from adapters.scratch import sweep_abandoned
from core.windows import window_of
from neurons import preflight, sync
from neurons.buckets import NeuronBuckets
from neurons.config import ConfigError, HParams, NeuronSettings
from neurons.container import build_container
from neurons.metrics import observing
from neurons.miner import Miner
from neurons.neuron import Neuron, Row
from neurons.task import ReadOnlyStore, TaskContext, TaskError, Training, load_task, resolve
from neurons.task_fit import network_mismatch
from neurons.validator import Validator
from ports import Chain, Clock, StoreOpener

log = logging.getLogger(__name__)
ROLES: dict[str, type[Neuron]] = {"miner": Miner, "validator": Validator}


class EventLog:
    """Appends one JSON line per event to a file (the localnet tails it); a line is written
    whole with a single write, so a reader never sees half of one."""

    def __init__(self, path: str) -> None:
        self._path = Path(path) if path else None
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, row: Row) -> None:
        if self._path is None:
            return
        line = json.dumps(row, separators=(",", ":"), default=str) + "\n"
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


async def build_neuron(
    role: str,
    hparams: HParams,
    settings: NeuronSettings,
    env: Mapping[str, str] | None = None,
    *,
    explicit: Collection[str] = (),
) -> Neuron:
    """The neuron, once `neurons/preflight.py` has checked its setup; nothing is created on
    disk before that (`explicit`: names of the settings the operator set)."""
    validator = role == "validator"
    resolve(hparams.task)  # a factory that cannot be imported stops us before the chain
    if settings.chain != "bittensor" and not settings.hotkey:
        raise ConfigError(
            "hotkey",
            f"required with the {settings.chain} chain: pass --hotkey, the name it is "
            "registered under",
        )
    container = build_container(
        hparams, settings, hotkey=settings.hotkey, validator=validator, env=env
    )
    if settings.storage == "r2":  # R2's buckets need no hotkey: check them before the chain
        preflight.r2_commitment(container.buckets())
    settings = preflight.fake_chain_settings(settings, explicit)
    container.config.block_time.from_value(settings.block_time)
    chain = preflight.open_chain(container, settings)
    hotkey = settings.hotkey or chain.hotkey  # type: ignore[attr-defined]
    if not settings.hotkey:
        container.config.hotkey.from_value(hotkey)
    opener = None
    try:
        await preflight.registered(chain, hotkey, settings)
        opener, buckets = container.storage(), container.buckets()
        await preflight.r2_reachable(opener, buckets, settings)
        training = await _training(hparams, settings, chain, opener, buckets, container.clock())
    except ConfigError:  # a SetupError, or a TaskError
        await preflight.release(chain, opener)
        raise
    # Local stale data: a neuron killed mid-checkpoint left its scratch files behind.
    for left in sweep_abandoned(container.config.scratch_dir()):
        log.info("removed the scratch files of a process that died: %s", left)
    return ROLES[role](
        hparams,
        settings,
        chain=chain,
        opener=opener,
        clock=container.clock(),
        buckets=buckets,
        hotkey=hotkey,
        signer=container.signer(),
        verifier=container.verifier(),
        on_row=EventLog(settings.events),
        scratch=container.scratch(),
        local=container.local_store(),
        timestamp_resolution=container.timestamp_resolution(),
        profile=container.protocol(),
        decode_workers=container.decode_workers(),
        aggregates=opener.open(buckets.aggregator_read) if buckets.aggregator_read else None,
        task=training,
    )


async def _training(
    hparams: HParams,
    settings: NeuronSettings,
    chain: Chain,
    opener: StoreOpener,
    buckets: NeuronBuckets,
    clock: Clock,
) -> Training:
    """The hparams' task, loaded and checked against the network's newest checkpoint; a
    `TaskError` (exit 2) before any bucket is written when it cannot be this network's."""
    read = buckets.dataset_read
    context = TaskContext(
        hparams=hparams,
        device=settings.device,
        dataset=ReadOnlyStore(opener, read) if read is not None else None,
        clock=clock,
    )
    training = load_task(context)
    mismatch = await network_mismatch(
        training.model,
        metagraph=await chain.metagraph(),
        commitments=await chain.bucket_commitments(),
        opener=opener,
        settings=sync.checkpoint_settings(hparams.version, hparams.checkpoint_frequency),
        current_window=window_of(await chain.current_block(), hparams.blocks_per_window),
    )
    if mismatch is not None:
        raise TaskError(hparams.task, f"{mismatch}; run the network's task (hparam `task`)")
    return training


async def _run(neuron: Neuron, max_windows: int | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        # First signal: finish the window in progress, then stop. Second: abandon it now.
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1 and main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await neuron.run(stop, max_windows)
    except asyncio.CancelledError:
        log.warning("%s: window abandoned on a second signal", neuron.role)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_neuron(
    role: str,
    hparams: HParams,
    settings: NeuronSettings,
    *,
    max_windows: int | None = None,
    threads: int | None = None,
    explicit: Collection[str] = (),
) -> int:
    if threads:
        torch.set_num_threads(threads)

    async def main() -> int:
        # One loop for the checks and the run: the chain's connection belongs to it.
        neuron = await build_neuron(role, hparams, settings, explicit=explicit)
        with observing(neuron, settings.metrics_port):
            return await _run(neuron, max_windows)

    return asyncio.run(main())
