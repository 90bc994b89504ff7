"""A small decoder-only transformer over bytes, in plain torch (no hub, no tokenizer).

Pre-norm blocks of causal self-attention and an MLP, learned positions, the output layer
tied to the byte embedding. Every process builds the same initial weights from the seed.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn
from torch.nn import functional as F

VOCAB = 256  # bytes


@attrs.frozen(kw_only=True)
class ModelShape:
    width: int = 256
    layers: int = 4
    heads: int = 4
    context: int = 128

    def __attrs_post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError("width must be a multiple of heads")


class Block(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.heads = shape.heads
        self.norm1 = nn.LayerNorm(shape.width)
        self.qkv = nn.Linear(shape.width, 3 * shape.width)
        self.proj = nn.Linear(shape.width, shape.width)
        self.norm2 = nn.LayerNorm(shape.width)
        self.up = nn.Linear(shape.width, 4 * shape.width)
        self.down = nn.Linear(4 * shape.width, shape.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, c))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class ByteTransformer(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(VOCAB, shape.width)
        self.position = nn.Embedding(shape.context, shape.width)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.layers))
        self.norm = nn.LayerNorm(shape.width)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # Residual outputs start smaller, so a deep stack starts near the identity.
                residual = name.endswith(("proj.weight", "down.weight"))
                std = 0.02 / (2 * shape.layers) ** 0.5 if residual else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits over the next byte at every position of `tokens` (batch, time)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
