"""The training task a network runs: its model, data, loss, optimizer and scheduler.

The communication layer only ever sees named gradient tensors; everything about *what* is
trained is a `Task`, chosen by the `task` hparam: a built-in name (`tiny`, `lm`) or
`package.module:factory`, a callable that takes a `TaskContext` and returns a `Task`
(docs/tasks.md). `load_task` imports and checks it before a neuron touches any bucket: a
factory that cannot be imported, or returns something that is not a task, is a `TaskError`,
which the CLI prints as one line and exits 2 with.

Every neuron of a network builds the same task from the same hparams, so a validator can
regenerate a miner's batches from (window, uid) and every process starts from the same weights.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from neurons.config import ConfigError, HParams
from ports import Blob, Bucket, Clock, ObjectMeta, ObjectStore, StoreOpener

Batch = Any  # opaque to the neurons: made by a task's batches, read only by its loss

BUILT_IN = {
    "tiny": "neurons.tasks.tiny:tiny_task",
    "lm": "neurons.tasks.lm:lm_task",
}


@runtime_checkable
class Task(Protocol):
    """What a network trains. Batches are async because a task may read them from storage;
    a batch it cannot read is left out (logged), so a list may be shorter than `count`."""

    def model(self) -> nn.Module:
        """The initial model: the same weights in every process of the network."""
        ...

    async def train_batches(self, uid: int, window: int, count: int) -> list[Batch]:
        """Miner `uid`'s batches of `window`: the same in every process (a validator
        reproduces them)."""
        ...

    async def eval_batches(self, window: int, count: int) -> list[Batch]:
        """Held-out batches a validator scores gradients on in `window`."""
        ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """A scalar loss of `model` on one batch."""
        ...

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The outer optimizer: it steps `model` along each window's aggregated gradient."""
        ...

    def scheduler(self, optimizer: torch.optim.Optimizer) -> LRScheduler:
        """The learning-rate schedule of `optimizer`, stepped once per outer step."""
        ...


class ReadOnlyStore:
    """The dataset bucket as a task sees it: reads only, whatever the credentials allow.
    Opened on first use, so a task that reads no data opens (and creates) nothing."""

    def __init__(self, opener: StoreOpener, bucket: Bucket) -> None:
        self._opener = opener
        self._bucket = bucket
        self._inner: ObjectStore | None = None

    @property
    def name(self) -> str:
        return self._bucket.name

    def _store(self) -> ObjectStore:
        if self._inner is None:
            self._inner = self._opener.open(self._bucket)
        return self._inner

    async def get(self, key: str, *, max_bytes: int | None = None) -> Blob:
        return await self._store().get(key, max_bytes=max_bytes)

    async def head(self, key: str) -> ObjectMeta | None:
        return await self._store().head(key)

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


@attrs.frozen(kw_only=True)
class TaskContext:
    """What a task factory is given. `dataset` is None when no dataset bucket is configured
    (R2_DATASET_* unset); a task that needs one raises `TaskError` saying so."""

    hparams: HParams
    device: str = "cpu"
    dataset: ReadOnlyStore | None = None
    clock: Clock | None = None
    log: logging.Logger = attrs.field(factory=lambda: logging.getLogger("neurons.task"))

    @property
    def seed(self) -> int:
        return self.hparams.seed


class TaskError(ConfigError):
    """The task cannot be used: one line saying why, exit 2 (like any configuration error)."""

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__("task", f"{spec!r}: {problem}")


@attrs.define
class Training:
    """A loaded task with the model, optimizer and scheduler a neuron steps."""

    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    dataset: ReadOnlyStore | None = None

    async def close(self) -> None:
        if self.dataset is not None:
            await self.dataset.close()

    @property
    def learning_rate(self) -> float:
        """The learning rate the next outer step uses."""
        return float(self.optimizer.param_groups[0]["lr"])


def resolve(spec: str) -> Callable[[TaskContext], Any]:
    """The factory `spec` names: a built-in, or `package.module:callable`."""
    path = BUILT_IN.get(spec, spec)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        names = ", ".join(sorted(BUILT_IN))
        raise TaskError(spec, f"not a built-in task ({names}) nor 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure of a user's module is the same mistake to report
        raise TaskError(spec, f"cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise TaskError(spec, f"module {module_name} has no {attr!r}")
    if not callable(factory):
        raise TaskError(spec, f"{attr} in {module_name} is not callable")
    return factory  # type: ignore[return-value]


_ASYNC = ("train_batches", "eval_batches")
_METHODS = ("model", "loss", "optimizer", "scheduler", *_ASYNC)


def _check_shape(spec: str, task: object) -> None:
    missing = [m for m in _METHODS if not callable(getattr(task, m, None))]
    if missing:
        raise TaskError(
            spec,
            f"the factory returned a {type(task).__name__}, not a task: it lacks "
            f"{', '.join(missing)} (docs/tasks.md lists what a task has)",
        )
    not_async = [m for m in _ASYNC if not inspect.iscoroutinefunction(getattr(task, m))]
    if not_async:
        raise TaskError(spec, f"{', '.join(not_async)} must be async (`async def`)")


def _built(spec: str, what: str, build: Callable[[], Any], kind: type) -> Any:
    try:
        value = build()
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(spec, f"{what} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, kind):
        want = f"{kind.__module__}.{kind.__name__}"
        raise TaskError(spec, f"{what} returned a {type(value).__name__}, not a {want}")
    return value


def load_task(context: TaskContext) -> Training:
    """The hparams' task, built and checked: a `TaskError` for anything that is not usable."""
    spec = context.hparams.task
    factory = resolve(spec)
    task = _built(spec, "the factory", lambda: factory(context), object)
    _check_shape(spec, task)
    model = _built(spec, "model()", task.model, nn.Module)
    if not any(True for _ in model.parameters()):
        raise TaskError(spec, "model() has no parameters to train")
    optimizer = _built(
        spec, "optimizer(model)", lambda: task.optimizer(model), torch.optim.Optimizer
    )
    scheduler = _built(spec, "scheduler(optimizer)", lambda: task.scheduler(optimizer), LRScheduler)
    return Training(
        task=task, model=model, optimizer=optimizer, scheduler=scheduler, dataset=context.dataset
    )
