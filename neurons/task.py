"""The tiny training task of the localnet: a small MLP learning a fixed random teacher.

Everything is seeded, so every process builds the same initial model and a validator can
regenerate any batch: a miner's training batches depend on (uid, window), a validator's
held-out batches on the window alone. Real deployments plug their own model and data here;
the communication layer only ever sees named gradient tensors.
"""

from __future__ import annotations

import torch
from torch import nn

_IN, _HIDDEN, _OUT = 32, 64, 8
_EVAL_SALT = 1_000_003


class TinyTask:
    def __init__(self, seed: int, batch_size: int, device: str = "cpu") -> None:
        self.seed = seed
        self.batch_size = batch_size
        self.device = torch.device(device)
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

    def _batch(self, stream: int, window: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(hash((self.seed, stream, window, index)) & (2**62 - 1))
        x = torch.randn(self.batch_size, _IN, generator=gen)
        y = x @ self._teacher
        y = y + 0.3 * torch.tanh(y * self._bend)
        return x.to(self.device), y.to(self.device)

    def train_batch(self, uid: int, window: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch(uid, window, index)

    def eval_batch(self, window: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch(_EVAL_SALT, window, index)

    @staticmethod
    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)
