"""No compression: every gradient travels whole as float32. A baseline and a debugging aid."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from core.compression.base import Checked, Compressed, Shape, Spec, TensorSpec
from core.compression.bounds import check_values

PREFIX = "dense/"


class DenseCompressor:
    def __repr__(self) -> str:
        return "DenseCompressor()"

    @property
    def spec(self) -> Spec:
        return {"method": "dense", "dtype": "float32"}

    def layout(self, shapes: Mapping[str, Shape]) -> dict[str, TensorSpec]:
        return {PREFIX + n: TensorSpec(torch.float32, tuple(s)) for n, s in sorted(shapes.items())}

    def estimate_bytes(self, shapes: Mapping[str, Shape]) -> int:
        return sum(4 * math.prod(s) for s in shapes.values())

    @torch.no_grad()
    def encode(self, grads: Mapping[str, torch.Tensor]) -> Compressed:
        names = sorted(grads)
        return Compressed(
            spec=self.spec,
            shapes=[(n, tuple(grads[n].shape)) for n in names],
            tensors={PREFIX + n: grads[n].detach().to(torch.float32).contiguous() for n in names},
        )

    @torch.no_grad()
    def decode(
        self,
        compressed: Compressed,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        out = {}
        for name, _ in compressed.shapes:
            t = compressed.tensors[PREFIX + name]
            out[name] = t.to(device=device or t.device, dtype=dtype)
        return out

    def validate(self, compressed: Compressed, *, on_loop: bool = False) -> Checked:
        for name, t in compressed.tensors.items():
            check_values(name, t)
        return Checked(compressed)
