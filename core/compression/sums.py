"""Choosing a running sum (core.compression.summing), once, for a gather or a validator."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from core.compression import compiled_sum
from core.compression.base import Compressor, Shape
from core.compression.summing import ChunkSum, DenseSum, RunningSum
from core.compression.topk import TopKCompressor


def make_sum(
    compressor: Compressor,
    shapes: Mapping[str, Shape],
    device: torch.device | str = "cpu",
    *,
    peers: int | None = None,
    background: bool = False,
    compiled: bool | None = None,
) -> RunningSum:
    """The fastest running sum this compressor, device and format allow.

    `peers`: how many are expected, if known (sizes the compiled sum's batches);
    `background`: adds may run on threads of their own, awaited on the event loop (False:
    everything on the caller's thread, as a fake clock needs); `compiled`: force the
    compiled CPU sum on (an error where it cannot run) or off (None: wherever it runs).
    """
    if not isinstance(compressor, TopKCompressor):
        return DenseSum(compressor, shapes, device, background=background)
    plan = compressor.plan(shapes)
    if compiled is None:
        compiled = compiled_sum.runs(compressor.params, device)
    if compiled:
        return compiled_sum.CompiledSum(
            compressor, plan, device, peers=peers, background=background
        )
    return ChunkSum(compressor, plan, device, background=background)
