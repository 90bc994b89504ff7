"""Task factories a test names in the `task` hparam, as a user's package would be named."""

from __future__ import annotations

from torch import nn

from neurons.task import TaskContext
from neurons.tasks.lm import LMTask
from neurons.tasks.tiny import TinyTask, tiny_task
from neurons.tasks.transformer import ModelShape

BUILT = []  # the contexts the factories were given, newest last


def recording(context: TaskContext) -> TinyTask:
    BUILT.append(context)
    return tiny_task(context)


def not_a_task(context: TaskContext) -> object:
    return {"model": "nope"}


class _SyncBatches(TinyTask):
    def train_batches(self, uid, window, count):  # type: ignore[override]
        return []


def sync_batches(context: TaskContext) -> TinyTask:
    return _SyncBatches(context.seed, 4)


class _StringOptimizer(TinyTask):
    def optimizer(self, model):  # type: ignore[override]
        return "sgd"


def string_optimizer(context: TaskContext) -> TinyTask:
    return _StringOptimizer(context.seed, 4)


def failing(context: TaskContext) -> TinyTask:
    raise RuntimeError("no GPU here")


class _Wider(TinyTask):
    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(32, 65), nn.Tanh(), nn.Linear(65, 8))


def wider(context: TaskContext) -> TinyTask:
    """The tiny task with another hidden width: same names, other shapes."""
    return _Wider(context.seed, 4)


NOT_CALLABLE = 3


class _Starved(TinyTask):
    """Miner uid 1 can read no batch in odd windows; the validator none in even ones."""

    async def train_batches(self, uid, window, count):
        return [] if uid == 1 and window % 2 else await super().train_batches(uid, window, count)

    async def eval_batches(self, window, count):
        return [] if window % 2 == 0 else await super().eval_batches(window, count)


def starved(context: TaskContext) -> TinyTask:
    hp = context.hparams
    return _Starved(hp.seed, hp.batch_size, context.device, hp.learning_rate)


# The lm task at a size a unit test trains in seconds, with Nesterov momentum so that its
# optimizer has state a checkpoint must carry.
SMALL_LM = ModelShape(width=32, layers=1, heads=2, context=32)


def small_lm(context: TaskContext) -> LMTask:
    assert context.dataset is not None, "the lm task reads the dataset bucket"
    hp = context.hparams
    return LMTask(
        context.dataset,
        seed=hp.seed,
        batch_size=hp.batch_size,
        learning_rate=hp.learning_rate,
        shape=SMALL_LM,
        momentum=0.9,
    )
