"""Gradient compression: one interface (`Compressor`), several small methods.

- `TopKCompressor` (default): chunking, optional DCT, top-k per chunk, quantised values,
  Elias-Fano coded indices (12-bit fields in the previous version, `index_code="packed"`);
  `TopKParams(quantization_bins=0)` is the top-k-only variant.
- `DenseCompressor`: no compression.
- `compress_with_feedback`: the error-feedback step the caller runs each window.
- `make_sum`: a running sum of many peers' payloads (`RunningSum`), for gather.
"""

from core.compression.base import (
    Checked,
    Compressed,
    Compressor,
    Shape,
    Spec,
    TensorSpec,
)
from core.compression.dense import DenseCompressor
from core.compression.feedback import FeedbackStep, compress_with_feedback
from core.compression.summing import ChunkSum, DenseSum, Prepared, RunningSum
from core.compression.sums import make_sum
from core.compression.topk import TopKCompressor, TopKParams


def default_compressor() -> TopKCompressor:
    """Templar's defaults: chunk 64, top-k 64, no DCT, 4 bins over 6 sigma."""
    return TopKCompressor(TopKParams())


def topk_only_compressor(target_chunk: int = 64, topk: int = 64, use_dct: bool = False):
    """Top-k per chunk with exact float32 values (no quantisation)."""
    return TopKCompressor(
        TopKParams(target_chunk=target_chunk, topk=topk, use_dct=use_dct, quantization_bins=0)
    )


__all__ = [
    "Checked",
    "ChunkSum",
    "Compressed",
    "Compressor",
    "DenseCompressor",
    "DenseSum",
    "FeedbackStep",
    "Prepared",
    "RunningSum",
    "Shape",
    "Spec",
    "TensorSpec",
    "TopKCompressor",
    "TopKParams",
    "compress_with_feedback",
    "default_compressor",
    "make_sum",
    "topk_only_compressor",
]
