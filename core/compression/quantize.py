"""Per-parameter value quantisation, batched over all parameters at once (Templar's scheme).

For the top-k values v of one parameter (m of them):
    shift  = mean(v);  c = v - shift
    sigma  = ||c|| / sqrt(m - 1)
    scale  = quantization_range * sigma / quantization_bins   (1.0 if 0, NaN or inf)
    code   = clamp(round(c / scale + bins // 2), 0, bins - 1)
    lookup[b] = mean of the c whose code is b (0.0 for an empty bin)
and a value decodes to shift + lookup[code]. Only shift and lookup travel; scale does not.

Error bound: a value decodes to the mean of its bin's members, so
|v - v_hat| <= max(c in bin) - min(c in bin); for a bin that is not clamped (not the first or
last) every member lies in a slot of width `scale`, so |v - v_hat| <= scale. Only values in
the two end bins (beyond the quantisation range) can be off by more.
"""

from __future__ import annotations

import attrs
import torch


@attrs.frozen(eq=False)
class Quantized:
    codes: torch.Tensor  # int64 (n,) in 0..bins-1
    shift: torch.Tensor  # float32 (P,)
    lookup: torch.Tensor  # float32 (P, bins)


def quantize(
    values: torch.Tensor, param_ids: torch.Tensor, n_params: int, bins: int, range_sigmas: float
) -> Quantized:
    """Quantise float `values` (n,) whose parameter is `param_ids` (n,), all at once."""
    device = values.device
    v = values.to(torch.float64)
    counts = torch.zeros(n_params, dtype=torch.float64, device=device)
    counts.index_add_(0, param_ids, torch.ones_like(v))
    sums = torch.zeros(n_params, dtype=torch.float64, device=device).index_add_(0, param_ids, v)
    shift = sums / counts.clamp_min(1)
    centered = (v - shift[param_ids]).to(torch.float32)
    sq = torch.zeros(n_params, dtype=torch.float64, device=device)
    sq.index_add_(0, param_ids, centered.to(torch.float64).square())
    # m - 1 <= 0 (a single value) gives inf or NaN, and the fallback below applies, as in Templar
    sigma = sq.sqrt() / (counts - 1).sqrt()
    scale = (range_sigmas * sigma / bins).to(torch.float32)
    scale = torch.where(torch.isfinite(scale) & (scale != 0), scale, torch.ones_like(scale))
    offset = bins // 2
    # A NaN would cast to an arbitrary int64 and index out of bounds below; any in-range code
    # does, since the NaN still reaches shift and lookup and receivers reject it (non_finite).
    scaled = (centered / scale[param_ids] + offset).nan_to_num_(nan=float(offset))
    codes = scaled.round().clamp_(0, bins - 1).to(torch.int64)
    slot = param_ids * bins + codes
    bin_sums = torch.zeros(n_params * bins, dtype=torch.float64, device=device)
    bin_sums.index_add_(0, slot, centered.to(torch.float64))
    bin_counts = torch.zeros(n_params * bins, dtype=torch.float64, device=device)
    bin_counts.index_add_(0, slot, torch.ones_like(v))
    lookup = torch.where(bin_counts > 0, bin_sums / bin_counts.clamp_min(1), 0.0)
    return Quantized(
        codes=codes,
        shift=shift.to(torch.float32),
        lookup=lookup.to(torch.float32).view(n_params, bins),
    )


def dequantize(
    codes: torch.Tensor, param_ids: torch.Tensor, shift: torch.Tensor, lookup: torch.Tensor
) -> torch.Tensor:
    bins = lookup.shape[1]
    return lookup.reshape(-1)[param_ids * bins + codes] + shift[param_ids]


def scale_of(values: torch.Tensor, bins: int, range_sigmas: float) -> float:
    """The quantisation step of one parameter's values (for the error bound in tests/docs)."""
    c = values.to(torch.float64) - values.to(torch.float64).mean()
    if values.numel() < 2:
        return 1.0
    s = float(range_sigmas * (c.norm() / (values.numel() - 1) ** 0.5) / bins)
    return s if s != 0 and s == s and s != float("inf") else 1.0
