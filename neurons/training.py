"""The training side of a window: a miner's gradient, the outer step, held-out losses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from neurons.task import TinyTask

Batch = tuple[torch.Tensor, torch.Tensor]


def window_gradient(
    task: TinyTask, model: nn.Module, uid: int, window: int, steps: int
) -> tuple[float, dict[str, torch.Tensor]]:
    """Mean loss and mean gradient over this miner's `steps` batches of `window`."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for index in range(steps):
        loss = task.loss(model, task.train_batch(uid, window, index)) / steps
        loss.backward()
        total += float(loss.detach())
    grads = {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return total, grads


@torch.no_grad()
def outer_step(model: nn.Module, aggregate: Mapping[str, torch.Tensor], lr: float) -> None:
    """Move every parameter against the aggregated (normalised) gradient."""
    for name, p in model.named_parameters():
        step = aggregate.get(name)
        if step is not None:
            p.sub_(step.to(p.device, p.dtype), alpha=lr)


@torch.no_grad()
def mean_loss(task: TinyTask, model: nn.Module, batches: Iterable[Batch]) -> float:
    losses = [float(task.loss(model, b)) for b in batches]
    return sum(losses) / max(len(losses), 1)


@torch.no_grad()
def loss_after_step(
    task: TinyTask,
    model: nn.Module,
    grad: Mapping[str, torch.Tensor],
    lr: float,
    batches: list[Batch],
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
