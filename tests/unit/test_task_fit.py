"""A task whose model is not the network's is refused at start: compared with the newest
checkpoint's shard headers (names and shapes), before the neuron writes anything."""

from __future__ import annotations

import pytest

from adapters.chain.fake import FakeNetwork
from adapters.clock import FakeClock
from adapters.scratch import TempScratch
from adapters.storage.chaos import ChaosOpener, Fault
from adapters.storage.memory import MemoryStoreOpener
from core.checkpoints import Checkpointer, CheckpointMeta, CheckpointState
from neurons import sync
from neurons.buckets import local_buckets
from neurons.config import NeuronSettings, hparams_from_mapping
from neurons.runner import _training
from neurons.task import TaskContext, TaskError, load_task
from neurons.task_fit import differences, model_layout
from ports import NotFound

WIDER = "tests.unit.task_factories:wider"


class Network:
    def __init__(self, tmp_path):
        self.clock = FakeClock()
        self.network = FakeNetwork.in_memory(self.clock, block_time=0.5)
        self.opener = MemoryStoreOpener(self.clock)
        self.network.register("val", stake=100.0, validator_permit=True)
        self.network.register("m1")
        self.validator = local_buckets("val", with_aggregator=True)
        self.miner = local_buckets("m1")
        self.tmp_path = tmp_path

    async def checkpoint(self, task: str, window: int = 3) -> None:
        """The validator commits its bucket and saves `task`'s initial model there."""
        hp = hparams_from_mapping({"task": task})
        await self.network.chain("val").commit_bucket(self.validator.gradients_read)
        model = load_task(TaskContext(hparams=hp)).model
        store = self.opener.open(self.validator.gradients_write)
        settings = sync.checkpoint_settings(hp.version, hp.checkpoint_frequency)
        saver = Checkpointer(store, TempScratch(self.tmp_path / "scratch"), self.clock, settings)
        meta = CheckpointMeta(window=window, global_step=window, uid=0, hotkey="val")
        await saver.save(CheckpointState(model=model.state_dict()), meta)
        self.clock.advance(60.0)  # the chain's current window is past the checkpoint's

    async def start(self, task: str, opener=None):
        hp = hparams_from_mapping({"task": task})
        settings = NeuronSettings(storage="memory", chain="memory")
        chain = self.network.chain("m1")
        return await _training(hp, settings, chain, opener or self.opener, self.miner, self.clock)

    async def miner_objects(self) -> list[str]:
        store = self.opener.open(self.miner.gradients_read)
        return [m.key async for m in store.list("")]


async def test_a_model_that_does_not_match_the_checkpoint_is_refused(tmp_path):
    net = Network(tmp_path)
    await net.checkpoint("tiny")
    with pytest.raises(TaskError) as caught:
        await net.start(WIDER)
    message = str(caught.value)
    assert "does not match the network's checkpoint (window 3, validator uid 0" in message
    assert "'0.bias' is [64] there, [65] here" in message
    assert "\n" not in message
    assert await net.miner_objects() == []  # nothing written before the refusal


async def test_the_networks_own_task_starts(tmp_path):
    net = Network(tmp_path)
    await net.checkpoint("tiny")
    training = await net.start("tiny")
    assert set(model_layout(training.model)) == {"0.weight", "0.bias", "2.weight", "2.bias"}


async def test_without_a_checkpoint_any_task_starts(tmp_path):
    net = Network(tmp_path)
    await net.network.chain("val").commit_bucket(net.validator.gradients_read)
    await net.start(WIDER)


async def test_an_unreadable_checkpoint_proves_nothing(tmp_path):
    net = Network(tmp_path)
    await net.checkpoint("tiny")

    def shards_missing(bucket, op, key):
        return Fault(error_rate=1.0, error=NotFound) if key.endswith(".safetensors") else Fault()

    broken = ChaosOpener(net.opener, net.clock, shards_missing)
    await net.start(WIDER, opener=broken)  # the neuron's own sync will skip that checkpoint


def test_differences_name_what_is_missing_extra_and_reshaped():
    ours = {"a": (2, 3), "b": (4,), "c": (1,)}
    theirs = {"a": (2, 3), "b": (5,), "d": (1,)}
    found = differences(ours, theirs)
    assert found == [
        "1 tensor(s) the task's model lacks, e.g. 'd'",
        "1 of the task's tensor(s) absent, e.g. 'c'",
        "'b' is [5] there, [4] here",
    ]
    assert differences(ours, dict(ours)) == []
