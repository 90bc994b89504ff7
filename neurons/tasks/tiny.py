"""The tiny task of the demo and the tests: a small MLP learning a fixed random teacher.

Everything is seeded, so every process builds the same initial model and a validator can
regenerate any batch: a miner's training batches depend on (uid, window), a validator's
held-out batches on the window alone. No data is read from storage.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from neurons.task import TaskContext

_IN, _HIDDEN, _OUT = 32, 64, 8
_EVAL_SALT = 1_000_003

Batch = tuple[torch.Tensor, torch.Tensor]


class TinyTask:
    def __init__(
        self, seed: int, batch_size: int, device: str = "cpu", learning_rate: float = 0.15
    ) -> None:
        self.seed = seed
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.learning_rate = learning_rate
        gen = torch.Generator().manual_seed(seed)
        # The teacher: a fixed random linear map plus a mild nonlinearity to learn.
        self._teacher = torch.randn(_IN, _OUT, generator=gen) / _IN**0.5
        self._bend = torch.randn(_OUT, generator=gen)

    def model(self) -> nn.Module:
        """The shared initial model (same weights in every process)."""
        torch.manual_seed(self.seed)
        return nn.Sequential(nn.Linear(_IN, _HIDDEN), nn.Tanh(), nn.Linear(_HIDDEN, _OUT)).to(
            self.device
        )

    def _batch(self, stream: int, window: int, index: int) -> Batch:
        gen = torch.Generator().manual_seed(hash((self.seed, stream, window, index)) & (2**62 - 1))
        x = torch.randn(self.batch_size, _IN, generator=gen)
        y = x @ self._teacher
        y = y + 0.3 * torch.tanh(y * self._bend)
        return x.to(self.device), y.to(self.device)

    async def train_batches(self, uid: int, window: int, count: int) -> list[Batch]:
        return [self._batch(uid, window, i) for i in range(count)]

    async def eval_batches(self, window: int, count: int) -> list[Batch]:
        return [self._batch(_EVAL_SALT, window, i) for i in range(count)]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        # Plain SGD: each outer step moves the parameters by learning_rate times the
        # aggregate, the same step in every process.
        return torch.optim.SGD(model.parameters(), lr=self.learning_rate)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> LRScheduler:
        return LambdaLR(optimizer, lambda step: 1.0)


def tiny_task(context: TaskContext) -> TinyTask:
    hp = context.hparams
    return TinyTask(hp.seed, hp.batch_size, context.device, hp.learning_rate)
