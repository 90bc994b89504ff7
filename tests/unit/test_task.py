"""Loading a task from the `task` hparam: built-ins, a user's factory, and every way a
factory can be unusable, each a one-line TaskError (the CLI's exit 2)."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from neurons.config import HParams, hparams_from_mapping
from neurons.task import TaskContext, TaskError, load_task
from neurons.tasks.tiny import TinyTask
from neurons.training import apply_aggregate, schedule_to
from tests.unit import task_factories

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


def test_a_resumed_neuron_moves_its_schedule_to_its_step():
    training = load_task(context("tiny"))
    schedule_to(training, 12)
    assert training.scheduler.last_epoch == 12
    schedule_to(training, 3)  # never backwards
    assert training.scheduler.last_epoch == 12
