"""Small gradient sets for compression and codec tests (the 25M model lives in bench/)."""

from __future__ import annotations

import torch

SHAPES = {
    "attn.q.weight": (128, 64),
    "attn.k.weight": (64, 64),
    "mlp.up.weight": (192, 64),
    "mlp.down.weight": (64, 192),
    "norm.weight": (64,),
    "odd.weight": (30, 7),
    "prime.bias": (67,),
    "conv.weight": (8, 4, 3, 3),
    "scale": (),
}


def grads(seed: int = 0, shapes=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shape, generator=gen).to(dtype)
        for name, shape in (shapes or SHAPES).items()
    }
