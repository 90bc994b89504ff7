"""Error feedback: what compression dropped is carried into the next window.

The caller owns the error buffer (Templar calls it momentum). Per window:

    acc      = decay * error + grad          (decay=1.0: plain error feedback)
    payload  = compressor.encode(acc)
    residual = acc - compressor.decode(payload)

and `residual` is next window's `error`. Subtracting the decoded payload (not the raw
top-k) also feeds the quantisation error back. Templar's miner does the same with its
momentum decay and learning-rate scaling folded into `decay` and `grad`.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch

from core.compression.base import Compressed, Compressor


@attrs.frozen(eq=False)
class FeedbackStep:
    compressed: Compressed
    residual: dict[str, torch.Tensor]


@torch.no_grad()
def compress_with_feedback(
    compressor: Compressor,
    grad: Mapping[str, torch.Tensor],
    error: Mapping[str, torch.Tensor] | None,
    *,
    decay: float = 1.0,
) -> FeedbackStep:
    """Compress grad + decay * error; return the payload and the new error buffer.

    `error` None means an empty buffer (first window). Tensors in `residual` are new; the
    inputs are not modified.
    """
    if error is None:
        acc = {n: g.detach().to(torch.float32) for n, g in grad.items()}
    else:
        missing = set(grad) ^ set(error)
        if missing:
            raise ValueError(f"grad and error differ in parameters: {sorted(missing)}")
        acc = {n: error[n].to(torch.float32) * decay + g.detach() for n, g in grad.items()}
    compressed = compressor.encode(acc)
    sent = compressor.decode(compressed)
    residual = {n: acc[n] - sent[n].to(acc[n].device) for n in acc}
    return FeedbackStep(compressed=compressed, residual=residual)
