"""A baseline that does what Templar's compressor (`src/tplr/compress.py`) does, step by step,
written here from a description of those steps (no code of Templar's is used or imported):

encode, per parameter: view the gradient as chunks (a strided rearrange "(y h) (x w) -> y x
h w", then each chunk flattened), take `abs`, `torch.topk(k, sorted=False)` per chunk,
gather the values, pack the indices two to three bytes (12 bits each), quantise the values
to 8-bit codes around their mean with a per-parameter lookup table of bin means; then
`torch.save` of everything (Templar's upload format).

decode: load, and per parameter unpack the indices, dequantise (`lookup[code] + shift`),
scatter the values into zeroed chunks (`scatter_reduce_` "mean", as Templar does), and
rearrange the chunks back into the parameter's layout.

Used by bench/compression.py to measure against, in the same run on the same machine.
"""

from __future__ import annotations

import io
import math

import torch

from core.compression.chunking import chunk_k, largest_divisor_at_most


def _pack12(idx: torch.Tensor) -> torch.Tensor:
    flat = idx.reshape(-1, 2)
    a, b = flat[:, 0], flat[:, 1]
    out = torch.empty((flat.shape[0], 3), dtype=torch.uint8)
    out[:, 0] = (a & 0xFF).to(torch.uint8)
    out[:, 1] = ((a >> 8) | ((b & 0x0F) << 4)).to(torch.uint8)
    out[:, 2] = (b >> 4).to(torch.uint8)
    return out.reshape(-1)


def unpack12(packed: torch.Tensor, shape) -> torch.Tensor:
    t = packed.view(-1, 3).to(torch.int64)
    out = torch.empty((t.shape[0], 2), dtype=torch.int64)
    out[:, 0] = t[:, 0] | ((t[:, 1] & 0x0F) << 8)
    out[:, 1] = (t[:, 1] >> 4) | (t[:, 2] << 4)
    return out.reshape(shape)


class TemplarSteps:
    """Templar's compress / decompress steps at given hparams (no DCT)."""

    def __init__(self, target_chunk: int = 64, topk: int = 64, bins: int = 4, sigmas=6.0):
        self.target_chunk, self.topk, self.bins, self.sigmas = target_chunk, topk, bins, sigmas

    def _geometry(self, shape):
        if len(shape) == 1:
            w = largest_divisor_at_most(shape[0], self.target_chunk)
            return 1, w
        return (
            largest_divisor_at_most(shape[0], self.target_chunk),
            largest_divisor_at_most(shape[1], self.target_chunk),
        )

    def _chunks(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self._geometry(tuple(x.shape))
        if x.dim() == 1:
            return x.view(-1, w)
        rows, cols = x.shape
        # the strided rearrange, then chunks flattened: reshape copies here
        return (
            x.view(rows // h, h, cols // w, w)
            .permute(0, 2, 1, 3)
            .reshape(rows // h, cols // w, h * w)
        )

    def _quantise(self, val: torch.Tensor):
        offset = self.bins // 2
        shift = val.mean()
        centered = val - shift
        std = centered.norm() / math.sqrt(centered.numel() - 1)
        scale = self.sigmas * std / self.bins
        if scale == 0 or not torch.isfinite(scale):
            scale = torch.tensor(1.0)
        codes = (centered / scale + offset).round().clamp(0, self.bins - 1).to(torch.uint8)
        sums = torch.zeros(self.bins).scatter_add_(0, codes.flatten().long(), centered.flatten())
        counts = torch.zeros(self.bins).scatter_add_(
            0, codes.flatten().long(), torch.ones(centered.numel())
        )
        lookup = torch.where(counts > 0, sums / counts, torch.zeros_like(sums))
        return codes, shift, lookup

    def encode(self, grads: dict[str, torch.Tensor]) -> bytes:
        out = {}
        for name, g in grads.items():
            x = self._chunks(g)
            k = chunk_k(self.topk, x.shape[-1])
            idx = torch.topk(x.abs(), k=k, dim=-1, largest=True, sorted=False).indices
            val = torch.gather(x, -1, idx)
            codes, shift, lookup = self._quantise(val)
            out[name] = {"idx": _pack12(idx), "val": codes, "shift": shift, "lookup": lookup}
        buf = io.BytesIO()
        torch.save(out, buf)
        return buf.getvalue()

    def decode(self, data: bytes, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        loaded = torch.load(io.BytesIO(data), weights_only=True)
        dense = {}
        for name, shape in shapes.items():
            part = loaded[name]
            val = part["lookup"][part["val"].long()] + part["shift"]
            h, w = self._geometry(shape)
            if len(shape) == 1:
                x = torch.zeros(shape[0] // w, w)
            else:
                x = torch.zeros(shape[0] // h, shape[1] // w, h * w)
            idx = unpack12(part["idx"], val.shape)
            x.scatter_reduce_(-1, idx, val, reduce="mean", include_self=False)
            if len(shape) == 1:
                dense[name] = x.reshape(shape)
            else:
                gy, gx = shape[0] // h, shape[1] // w
                dense[name] = x.view(gy, gx, h, w).permute(0, 2, 1, 3).reshape(shape)
        return dense
