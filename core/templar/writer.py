"""Templar gradient payloads written from this project's compressed form.

    encode(compressed, compressor, window=..., global_step=..., extra=None) -> bytes

The bytes are what Templar's `Comms.put` uploads: `torch.save({"state_dict": sd,
"global_step": step})` with, per parameter, 12-bit packed `idxs`, one uint8 code per value
in `vals` (shaped as Templar's compressor shapes them) and `quant_params` =
(shift, scale, offset, lookup, torch.float32), and `sd["metadata"] = {"window": w, ...}`.
Writing with `torch.save` executes nothing on the reader's side; a Templar node reads the
result with `torch.load(weights_only=True)` and its own decompressor.

`scale` does not travel in this project's format and Templar's decompressor never reads it
(its validators only check it is finite and within [1e-12, 1e4]); it is written as the
quantisation step of the parameter's decoded values, `quantization_range * sigma / bins`
(1.0 when that is 0 or not finite), the rule Templar's compressor uses on the values
before quantisation.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch

from core.compression import packing
from core.compression.base import Compressed
from core.compression.quantize import scale_of
from core.compression.topk import TopKCompressor
from core.templar.layout import layout_for

__all__ = ["encode", "state_dict"]


def state_dict(
    compressed: Compressed,
    compressor: TopKCompressor,
    *,
    window: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `state_dict` Templar's miner builds (`prepare_gradient_dict`) for `compressed`."""
    layout = layout_for(compressor, compressed.shape_map())
    p = compressor.params
    t = compressed.tensors
    local = compressor.local_indices(compressed, "cpu")
    codes = packing.unpack(t["val"].to("cpu"), layout.entries, p.value_bits)
    shift = t["shift"].to("cpu", torch.float32)
    lookup = t["lookup"].to("cpu", torch.float32)
    out: dict[str, Any] = {}
    for number, (m, lay) in enumerate(zip(layout.plan.params, layout.params, strict=True)):
        sl = slice(m.offset, m.offset + m.n_entries)
        c = codes[sl]
        out[m.name + "idxs"] = packing.pack(local[sl], 12).clone()
        out[m.name + "vals"] = c.to(torch.uint8).reshape(lay.vals_shape).clone()
        values = lookup[number][c] + shift[number]
        scale = scale_of(values, p.quantization_bins, p.quantization_range)
        out[m.name + "quant_params"] = (
            shift[number].clone(),
            float(scale),
            p.quantization_bins // 2,
            lookup[number].clone(),
            torch.float32,
        )
    out["metadata"] = {"window": int(window), **dict(extra or {})}
    return out


def encode(
    compressed: Compressed,
    compressor: TopKCompressor,
    *,
    window: int,
    global_step: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The payload file Templar's `Comms.put` would upload for `compressed`."""
    sd = state_dict(compressed, compressor, window=window, extra=extra)
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "global_step": int(global_step)}, buf)
    return buf.getvalue()
