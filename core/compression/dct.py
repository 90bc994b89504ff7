"""Orthonormal DCT-II basis matrices and the 2-D chunk transform.

With D[n, k] = sqrt(2/N) * cos(pi * (2n + 1) * k / (2N)) and column 0 scaled by 1/sqrt(2),
the coefficients of a chunk X (h x w) are D_h^T X D_w, and D is orthogonal, so the inverse
is D_h Y D_w^T. These are the matrices Templar builds from its FFT-based `_dct(eye, "ortho")`.
"""

from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=64)
def _basis_cpu(n: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    freq = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = math.sqrt(2.0 / n) * torch.cos(math.pi * (2 * pos + 1) * freq / (2 * n))
    basis[:, 0] /= math.sqrt(2.0)
    return basis.to(torch.float32)


@functools.lru_cache(maxsize=64)
def basis(n: int, device: torch.device) -> torch.Tensor:
    return _basis_cpu(n).to(device)


def forward(chunks: torch.Tensor) -> torch.Tensor:
    """DCT of each (h, w) chunk of a (..., h, w) tensor."""
    dh = basis(chunks.shape[-2], chunks.device)
    dw = basis(chunks.shape[-1], chunks.device)
    return dh.transpose(0, 1) @ chunks @ dw


def inverse(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of `forward`."""
    dh = basis(coeffs.shape[-2], coeffs.device)
    dw = basis(coeffs.shape[-1], coeffs.device)
    return dh @ coeffs @ dw.transpose(0, 1)
