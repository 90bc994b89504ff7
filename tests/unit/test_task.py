"""Loading a task from the `task` hparam: built-ins, a user's factory, and every way a
factory can be unusable, each a one-line TaskError (the CLI's exit 2)."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from neurons.config import HParams, hparams_from_mapping
from neurons.task import TaskContext, TaskError, load_task
from neurons.tasks.tiny import TinyTask
from neurons.training import apply_aggregate
from tests.unit import task_factories
from tests.unit.test_cli_errors import chain_file, files, one_line, run

FACTORIES = "tests.unit.task_factories"


def context(task: str, **changes) -> TaskContext:
    return TaskContext(hparams=hparams_from_mapping({"task": task, **changes}))


def test_the_default_task_is_tiny_with_its_optimizer_and_scheduler():
    training = load_task(TaskContext(hparams=HParams()))
    assert isinstance(training.task, TinyTask)
    assert isinstance(training.optimizer, torch.optim.SGD)
    assert isinstance(training.scheduler, LRScheduler)
    assert training.learning_rate == HParams().learning_rate


def test_a_user_factory_is_called_with_the_context():
    ctx = context(f"{FACTORIES}:recording", seed=7)
    training = load_task(ctx)
    assert task_factories.BUILT[-1] is ctx
    assert training.task.seed == 7


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("no_such_package_xyz.tasks:make", ["cannot import no_such_package_xyz.tasks"]),
        (f"{FACTORIES}:missing", ["has no 'missing'"]),
        (f"{FACTORIES}:NOT_CALLABLE", ["not callable"]),
        ("just-a-name", ["not a built-in task", "tiny", "lm", "package.module:factory"]),
        (f"{FACTORIES}:not_a_task", ["not a task", "lacks model, loss, optimizer"]),
        (f"{FACTORIES}:sync_batches", ["train_batches must be async"]),
        (f"{FACTORIES}:string_optimizer", ["optimizer(model) returned a str"]),
        (f"{FACTORIES}:failing", ["the factory failed: RuntimeError: no GPU here"]),
    ],
)
def test_an_unusable_factory_is_one_task_error(spec, words):
    with pytest.raises(TaskError) as caught:
        load_task(context(spec))
    message = str(caught.value)
    assert message.startswith(f"task: {spec!r}: ")
    assert "\n" not in message
    for word in words:
        assert word in message


def test_the_lm_task_without_a_dataset_bucket_says_which_variables_to_set():
    with pytest.raises(TaskError, match="R2_DATASET_"):
        load_task(context("lm"))


def test_the_outer_step_is_the_tasks_optimizer_then_its_scheduler():
    training = load_task(context("tiny", learning_rate=0.5))
    before = {n: p.detach().clone() for n, p in training.model.named_parameters()}
    aggregate = {n: torch.ones_like(p) for n, p in training.model.named_parameters()}
    apply_aggregate(training, aggregate)
    for name, p in training.model.named_parameters():
        assert torch.allclose(p, before[name] - 0.5)
        assert p.grad is None
    assert training.scheduler.last_epoch == 1


# The command line: one line on stderr, exit 2, nothing created ---------------------------


@pytest.fixture
def clean_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("TEMPLAR_", "R2_")):
            monkeypatch.delenv(name)
    return tmp_path


def test_an_unimportable_task_stops_the_cli_before_the_chain(clean_dir):
    result = run(
        "miner", "--task", "no_such_package_xyz:make",
        "--chain", "fake", "--hotkey", "m1", "--storage", "local",
    )  # fmt: skip
    one_line(result, "task", "cannot import no_such_package_xyz")
    assert files(clean_dir) == set()


@pytest.mark.parametrize("role", ["miner", "validator"])
def test_a_factory_that_returns_no_task_is_one_line_before_any_bucket(clean_dir, role):
    chain = chain_file(clean_dir, "n1")
    result = run(
        role, "--task", f"{FACTORIES}:not_a_task",
        "--chain", "fake", "--chain-path", str(chain), "--hotkey", "n1", "--storage", "local",
    )  # fmt: skip
    one_line(result, "task", "not a task")
    assert files(clean_dir) <= {"chain.json", "chain.json.lock"}  # no storage, no state


def test_task_on_the_command_line_beats_set(clean_dir):
    chain = chain_file(clean_dir, "n1")
    result = run(
        "miner", "--set", "task=tiny", "--task", f"{FACTORIES}:failing",
        "--chain", "fake", "--chain-path", str(chain), "--hotkey", "n1", "--storage", "local",
    )  # fmt: skip
    one_line(result, "no GPU here")


def test_the_dataset_bucket_is_read_only_and_only_when_configured():
    from neurons.container import _buckets
    from tests.unit.test_neuron_config import r2_env

    env = r2_env()
    assert _buckets("r2", "h", env, "", validator=True).dataset_read is None
    env |= {
        "R2_DATASET_ACCOUNT_ID": "d" * 32,
        "R2_DATASET_BUCKET_NAME": "d" * 32,
        "R2_DATASET_READ_ACCESS_KEY_ID": "r" * 32,
        "R2_DATASET_READ_SECRET_ACCESS_KEY": "s" * 64,
        "R2_DATASET_WRITE_ACCESS_KEY_ID": "w" * 32,
        "R2_DATASET_WRITE_SECRET_ACCESS_KEY": "x" * 64,
    }
    for validator in (True, False):
        dataset = _buckets("r2", "h", env, "", validator=validator).dataset_read
        assert dataset is not None and dataset.name == "d" * 32
        assert dataset.access_key_id == "r" * 32  # the read key, whatever else is set


def test_a_model_that_is_not_the_networks_is_refused_before_any_bucket_is_written(clean_dir):
    """A validator's checkpoint of the tiny model in local storage; a miner started with
    another model stops in one line, and its own bucket stays empty."""
    from adapters.chain.fake import FakeNetwork
    from adapters.clock import SystemClock
    from adapters.scratch import TempScratch
    from adapters.storage.local import LocalStoreOpener
    from core.checkpoints import Checkpointer, CheckpointMeta, CheckpointState
    from neurons import sync
    from neurons.buckets import local_buckets

    clock = SystemClock()
    network = FakeNetwork.at_path(clock_path := clean_dir / "chain.json", clock, block_time=0.5)
    network.register("v", stake=10.0, validator_permit=True)
    network.register("m")
    validator = local_buckets("v")
    opener = LocalStoreOpener(clean_dir / "templar-storage")
    hp = HParams()

    async def checkpoint() -> None:
        await network.chain("v").commit_bucket(validator.gradients_read)
        settings = sync.checkpoint_settings(hp.version, hp.checkpoint_frequency)
        saver = Checkpointer(
            opener.open(validator.gradients_write),
            TempScratch(clean_dir / "scratch"),
            clock,
            settings,
        )
        model = load_task(TaskContext(hparams=hp)).model
        meta = CheckpointMeta(window=0, global_step=0, uid=0, hotkey="v")
        await saver.save(CheckpointState(model=model.state_dict()), meta)

    asyncio.run(checkpoint())
    result = run(
        "miner", "--task", f"{FACTORIES}:wider",
        "--chain", "fake", "--chain-path", str(clock_path), "--hotkey", "m", "--storage", "local",
    )  # fmt: skip
    one_line(result, "task", "does not match the network's checkpoint", "'0.bias' is [64] there")
    own = clean_dir / "templar-storage" / local_buckets("m").gradients_write.name
    assert not own.exists() or not any(p.is_file() for p in own.rglob("*"))
    assert not (clean_dir / "templar-state").exists()
