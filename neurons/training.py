"""The training side of a window: a miner's gradient, the outer step, held-out losses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from neurons.task import Batch, Task, Training


class NoBatches(RuntimeError):
    """Every batch of a window was skipped (the task could read none): the window fails."""


def window_gradient(
    task: Task, model: nn.Module, batches: Sequence[Batch]
) -> tuple[float, dict[str, torch.Tensor]]:
    """Mean loss and mean gradient over `batches` (a miner's batches of one window)."""
    if not batches:
        raise NoBatches("no training batch could be read this window")
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss = task.loss(model, batch) / len(batches)
        loss.backward()
        total += float(loss.detach())
    grads = {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return total, grads


def apply_aggregate(training: Training, aggregate: Mapping[str, torch.Tensor]) -> None:
    """One outer step: the task's optimizer along the aggregate, then its scheduler."""
    model = training.model
    for name, p in model.named_parameters():
        step = aggregate.get(name)
        p.grad = None if step is None else step.detach().to(p.device, p.dtype).clone()
    training.optimizer.step()
    training.optimizer.zero_grad(set_to_none=True)
    training.scheduler.step()


@torch.no_grad()
def outer_step(model: nn.Module, aggregate: Mapping[str, torch.Tensor], lr: float) -> None:
    """Move every parameter against `aggregate` by `lr`: a validator's probe step."""
    for name, p in model.named_parameters():
        step = aggregate.get(name)
        if step is not None:
            p.sub_(step.to(p.device, p.dtype), alpha=lr)


@torch.no_grad()
def mean_loss(task: Task, model: nn.Module, batches: Sequence[Batch]) -> float:
    if not batches:
        return float("nan")
    losses = [float(task.loss(model, b)) for b in batches]
    return sum(losses) / len(losses)


@torch.no_grad()
def loss_after_step(
    task: Task,
    model: nn.Module,
    grad: Mapping[str, torch.Tensor],
    lr: float,
    batches: Sequence[Batch],
) -> float:
    """Held-out loss had `model` taken the step `lr * grad`; the model is left as it was."""
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in grad if name in params}
    try:
        outer_step(model, grad, lr)
        return mean_loss(task, model, batches)
    finally:
        for name, value in saved.items():
            params[name].copy_(value)


def unit_normalised(grad: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each parameter scaled to unit L2 norm, as gather's UNIT normalisation does."""
    out = {}
    for name, t in grad.items():
        norm = float(t.norm())
        out[name] = t / norm if norm > 1e-12 else torch.zeros_like(t)
    return out
