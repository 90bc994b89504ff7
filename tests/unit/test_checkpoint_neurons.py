"""Full checkpoints through the neurons, with the lm task and a stateful outer optimizer
(Nesterov momentum): a late joiner that loads the validator's checkpoint and catches up, and
a neuron restarted from its resume file, hold exactly the model, optimizer state and
scheduler of neurons that never stopped. Exactly, because every process applies the same
aggregates through the same optimizer code on the same device."""

from __future__ import annotations

import copy
import logging

import attrs
import torch

from core.checkpoints import CheckpointState
from neurons import sync
from neurons.buckets import local_buckets
from neurons.localnet import TASK_HPARAMS
from neurons.miner import Miner
from neurons.task import TaskContext, load_task
from neurons.validator import Validator
from tests.unit.checkpoint_helpers import assert_same
from tests.unit.test_lm_task import dataset
from tests.unit.test_neurons import HP, Net

LM_HP = attrs.evolve(
    HP,
    task="tests.unit.task_factories:small_lm",
    batch_size=4,
    learning_rate=0.25,
    duplicate_threshold=TASK_HPARAMS["lm"]["duplicate_threshold"],
)


class LMNet(Net):
    """`Net` whose neurons each build the lm task over one in-memory dataset bucket."""

    def __init__(self, tmp_path, store, **kwargs):
        self.dataset = store
        super().__init__(tmp_path, **kwargs)

    def make(self, kind, hotkey, aggregator=False, **extra):
        context = TaskContext(hparams=self.hparams, dataset=self.dataset)
        extra.setdefault("task", load_task(context))
        return super().make(kind, hotkey, aggregator=aggregator, **extra)


def training_state(neuron) -> dict:
    t = neuron.training
    return copy.deepcopy(
        {
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
        }
    )


def momentum_buffers(neuron) -> list[torch.Tensor]:
    return [s["momentum_buffer"] for s in neuron.training.optimizer.state.values()]


async def test_a_late_lm_miner_matches_a_miner_that_never_left(tmp_path):
    _, store = await dataset()
    hparams = attrs.evolve(LM_HP, checkpoint_frequency=3, sync_max_steps_behind=4)
    net = LMNet(tmp_path, store, miners=2, hparams=hparams, scratch=True)
    await net.run(4)
    # the checkpoint of step 3, then window 4's aggregate replayed from the aggregator bucket
    assert [r["checkpoint"] for r in net.validator_rows()] == [False, False, True, False]
    stayed = net.miners[0]
    assert stayed.global_step == 4
    assert any(b.abs().sum() > 0 for b in momentum_buffers(stayed))  # real optimizer state

    net.clock.advance(hparams.blocks_per_window * 0.5)  # the network moved on one window
    net.network.register("late")
    aggregator = net.opener.open(local_buckets("val", with_aggregator=True).aggregator_read)
    late = net.make(Miner, "late", aggregates=aggregator)
    await late.setup()
    assert (late.last_window, late.global_step) == (stayed.last_window, stayed.global_step)
    assert late.training.scheduler.last_epoch == stayed.training.scheduler.last_epoch == 4
    assert_same(training_state(late), training_state(stayed))
    assert_same(training_state(late), training_state(net.validator))


async def test_a_checkpoint_without_optimizer_state_is_skipped_with_the_reason(
    tmp_path, monkeypatch, caplog
):
    _, store = await dataset()
    hparams = attrs.evolve(LM_HP, checkpoint_frequency=2, sync_max_steps_behind=4)
    net = LMNet(tmp_path, store, miners=1, hparams=hparams, scratch=True)

    async def model_only(self, training, momentum, meta):  # an older validator's checkpoint
        state = CheckpointState(model=training.model.state_dict())
        return await self._saver.start(state, meta)

    monkeypatch.setattr(sync.CheckpointSaver, "maybe_save", model_only)
    await net.run(2)
    net.network.register("late")
    late = net.make(Miner, "late")
    before = training_state(late)
    with caplog.at_level(logging.WARNING):
        await late.setup()
    assert "no optimizer state" in caplog.text
    assert late.last_window is None and late.global_step == 0  # starts cold, untouched
    assert_same(training_state(late), before)


async def test_a_restarted_lm_network_continues_as_one_that_never_stopped(tmp_path):
    store_a, store_b = (await dataset())[1], (await dataset())[1]
    steady = LMNet(tmp_path / "steady", store_a, miners=2, hparams=LM_HP)
    await steady.run(5)

    net = LMNet(tmp_path / "restarted", store_b, miners=2, hparams=LM_HP)
    await net.run(3)
    # Every neuron stops and a new process starts from its resume file alone.
    stopped = {n.hotkey: training_state(n) for n in [net.validator, *net.miners]}
    net.validator = net.make(Validator, "val", aggregator=True)
    net.miners = [net.make(Miner, f"m{i}") for i in range(2)]
    for neuron in [net.validator, *net.miners]:
        await neuron.setup()
        assert_same(training_state(neuron), stopped[neuron.hotkey])
        assert neuron.global_step == 3
    assert net.miners[0].error is not None
    await net.run(2)

    windows = [r["window"] for r in net.validator_rows()]
    assert windows == [r["window"] for r in steady.validator_rows()]
    pairs = zip([net.validator, *net.miners], [steady.validator, *steady.miners], strict=True)
    for ours, theirs in pairs:
        assert ours.global_step == theirs.global_step == 5
        assert_same(training_state(ours), training_state(theirs))
        assert torch.equal(
            torch.cat([e.flatten() for e in (ours.error or {}).values()] or [torch.zeros(0)]),
            torch.cat([e.flatten() for e in (theirs.error or {}).values()] or [torch.zeros(0)]),
        )


async def test_a_resume_file_of_another_task_is_refused_and_the_neuron_starts_cold(
    tmp_path, caplog
):
    tiny = Net(tmp_path, miners=1)
    await tiny.run(2)  # m0's resume file holds the tiny task's state
    _, store = await dataset()
    lm = LMNet(tmp_path, store, miners=0, hparams=LM_HP)
    lm.network.register("m0")
    miner = lm.make(Miner, "m0")
    before = training_state(miner)
    with caplog.at_level(logging.WARNING):
        await miner.setup()
    assert "refused" in caplog.text
    assert miner.last_window is None and miner.global_step == 0
    assert_same(training_state(miner), before)
