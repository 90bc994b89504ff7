"""Templar gradient payloads read into this project's compressed form, never unpickled.

    decode(data, expected) -> codec.Payload                 (raises only InvalidPayload)
    decode_with_metadata(data, expected) -> (Payload, metadata dict)

A Templar payload is `torch.save({"state_dict": sd, "global_step": int})` where `sd` holds,
for every parameter, `{name}idxs`, `{name}vals` and `{name}quant_params`, plus a
`metadata` dict (`window`, and from miners `sample_digest` and `sample_count`). It is read
with `core.templar.tensors` (bounded zip, allow-listed pickle, checked views), checked
against the expected model and compressor, and turned into the `Compressed` value the
native top-k compressor reads in its previous ("packed", 12-bit) index code: the same
chunking, the same index order, 12-bit indices byte for byte, Templar's per-parameter
shift and lookup table, the value codes repacked to their bit width. So `gather`'s running
sum folds a Templar peer exactly like a native one. The codec's own `validate` then checks
index ranges, repeats, codes and value bounds, as for native payloads. The format's facts
and the check order are in docs/templar.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, cast

import torch

from core.codec import Expected, Payload, PayloadMeta
from core.compression import packing
from core.compression.base import Compressed
from core.compression.bounds import peak
from core.compression.topk import TopKCompressor
from core.invalid import InvalidPayload
from core.templar import pickle_walk, tensors, torchzip
from core.templar.layout import Layout, ParamLayout, layout_for

__all__ = [
    "MAX_SCALE",
    "MIN_SCALE",
    "decode",
    "decode_with_metadata",
    "expected_layout",
    "size_limit",
]

# Templar's validators refuse a quantisation scale outside these (comms.gather).
MIN_SCALE = 1e-12
MAX_SCALE = 1e4
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# top dict > state_dict > quant_params tuple > tensor, with room for metadata values
_MAX_DEPTH = 6
_MAX_METADATA_KEYS = 16
_MAX_METADATA_TEXT = 256
_SUFFIXES = ("quant_params", "idxs", "vals")  # longest first: "...quant_params" ends in "s"
_HEX = re.compile(r"^[0-9a-f]{1,128}$")


def expected_layout(expected: Expected) -> Layout:
    codec = expected.codec
    if not isinstance(codec, TopKCompressor):
        raise ValueError("Templar payloads need the top-k compressor")
    return layout_for(codec, expected.shapes)


def size_limit(expected: Expected) -> int:
    """The most bytes a Templar payload for `expected` may have: `expected.max_bytes` when
    set, else the layout's allowance. Give it to the fetch as its download limit: the
    native `expected.size_limit()` is that of the (smaller) native format."""
    if expected.max_bytes is not None:
        return expected.max_bytes
    return expected_layout(expected).size_limit()


def decode(data: bytes, expected: Expected, *, on_loop: bool = False) -> Payload:
    """Validate a Templar payload completely and return it; any defect is InvalidPayload.
    `on_loop`: the kernel variant of the codec's checks (as for `codec.decode`)."""
    return decode_with_metadata(data, expected, on_loop=on_loop)[0]


def decode_with_metadata(
    data: bytes, expected: Expected, *, on_loop: bool = False
) -> tuple[Payload, dict[str, Any]]:
    """`decode`, plus the payload's `metadata` dict (primitives only, checked)."""
    layout = expected_layout(expected)  # a configuration error is a ValueError, not a peer's
    try:
        return _decode(data, expected, layout, on_loop)
    except InvalidPayload:
        raise
    except Exception as exc:  # the last guard: no other exception type leaves decode
        raise InvalidPayload("malformed", f"{type(exc).__name__}: {exc}") from None


def _decode(
    data: bytes, expected: Expected, layout: Layout, on_loop: bool
) -> tuple[Payload, dict[str, Any]]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidPayload("not_bytes", f"payload is {type(data).__name__}, not bytes")
    limit = size_limit(expected)
    if len(data) > limit:
        raise InvalidPayload("too_large", f"{len(data)} bytes > limit {limit}")
    limits = torchzip.ArchiveLimits(
        max_entries=layout.max_entries(),
        max_entry_bytes=max(p.idx_bytes for p in layout.params) + 4096,
        max_pickle_bytes=layout.max_pickle_bytes(),
    )
    archive = torchzip.read(data, limits)
    tree = tensors.build(pickle_walk.walk(archive.pickle, max_depth=_MAX_DEPTH), archive.storages)
    state, global_step = _top(tree)
    metadata = _metadata(state.get("metadata"), expected)
    _check_keys(state, layout)
    tensors_ = _to_compressed(state, layout)
    codec = cast(TopKCompressor, expected.codec)  # expected_layout checked it
    spec = dict(codec.spec)
    spec.pop("index_code", None)  # Templar's 12-bit indices: the "packed" index code
    compressed = Compressed(spec=spec, shapes=expected.wire_shapes(), tensors=tensors_)
    checked = codec.validate(compressed, on_loop=on_loop)
    meta = PayloadMeta(
        window=metadata["window"],
        uid=expected.uid if expected.uid is not None else 0,
        hotkey=expected.hotkey or "",
        global_step=global_step,
        version=expected.version,
    )
    return Payload(meta=meta, checked=checked, nbytes=len(data), signed=False), metadata


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62


def _top(tree: Any) -> tuple[dict[str, Any], int]:
    if not isinstance(tree, dict) or "state_dict" not in tree:
        raise InvalidPayload("bad_structure", "not a {'state_dict': ...} payload")
    if set(tree) - {"state_dict", "global_step"}:
        raise InvalidPayload("bad_structure", "top level holds keys other than Templar's two")
    state = tree["state_dict"]
    if not isinstance(state, dict):
        raise InvalidPayload("bad_structure", "state_dict is not a dict")
    step = tree.get("global_step", 0)  # Templar's reader defaults it to 0
    if not _is_count(step):
        raise InvalidPayload("bad_metadata", "global_step is not a non-negative int")
    return state, step


def _metadata(meta: Any, expected: Expected) -> dict[str, Any]:
    if not isinstance(meta, dict) or len(meta) > _MAX_METADATA_KEYS:
        raise InvalidPayload("bad_metadata", "metadata is not a small dict")
    for k, v in meta.items():
        if not isinstance(k, str) or len(k) > 64:
            raise InvalidPayload("bad_metadata", "metadata key is not a short str")
        if isinstance(v, str) and len(v) > _MAX_METADATA_TEXT:
            raise InvalidPayload("bad_metadata", f"metadata {k} is a long text")
        if not isinstance(v, str | int | float | bool | type(None)):
            raise InvalidPayload("bad_metadata", f"metadata {k} is a {type(v).__name__}")
    window = meta.get("window")
    if not _is_count(window):
        raise InvalidPayload("bad_metadata", "metadata window is not a non-negative int")
    if expected.window is not None and window != expected.window:
        raise InvalidPayload("window_mismatch", f"window {window} != {expected.window}")
    if meta.get("dummy") is True:  # a miner's "I am here" marker carries no gradient
        raise InvalidPayload("missing_param", "a dummy payload (metadata only)")
    if "sample_digest" in meta and not (
        isinstance(meta["sample_digest"], str) and _HEX.match(meta["sample_digest"])
    ):
        raise InvalidPayload("bad_metadata", "sample_digest is not lowercase hex")
    if "sample_count" in meta and not _is_count(meta["sample_count"]):
        raise InvalidPayload("bad_metadata", "sample_count is not a non-negative int")
    return dict(meta)


def _check_keys(state: Mapping[str, Any], layout: Layout) -> None:
    names = {p.name for p in layout.params}
    for key in state:
        if key == "metadata":
            continue
        if not isinstance(key, str):
            raise InvalidPayload("bad_structure", "a non-str key in state_dict")
        base = next((key[: -len(s)] for s in _SUFFIXES if key.endswith(s)), None)
        if base is None:
            raise InvalidPayload("unknown_tensor", f"unexpected key {key[:128]!r}")
        if base not in names:
            raise InvalidPayload("unknown_param", f"{base[:128]!r} is not a parameter here")
    for p in layout.params:
        for suffix in _SUFFIXES:
            if p.name + suffix not in state:
                raise InvalidPayload("missing_param", f"{p.name}{suffix} is missing")


def _tensor(value: Any, what: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidPayload("bad_structure", f"{what} is a {type(value).__name__}")
    if value.dtype != dtype:
        raise InvalidPayload("bad_dtype", f"{what} is {value.dtype}, not {dtype}")
    if tuple(value.shape) != shape:
        raise InvalidPayload("bad_shape", f"{what} has shape {tuple(value.shape)}, not {shape}")
    return value.reshape(-1)  # a copy only for a strided view


def _quant(value: Any, p: ParamLayout, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    what = f"{p.name}quant_params"
    if not isinstance(value, tuple) or len(value) != 5:
        raise InvalidPayload("bad_quant_params", f"{what} is not a 5-tuple")
    shift, scale, offset, lookup, dtype = value
    if dtype not in _FLOAT_DTYPES:
        raise InvalidPayload("bad_quant_params", f"{what}: value dtype {dtype!r}")
    if not isinstance(shift, torch.Tensor) or shift.dtype != dtype or shift.dim() != 0:
        raise InvalidPayload("bad_quant_params", f"{what}: shift is not a 0-d {dtype} tensor")
    if not isinstance(scale, float) or not (
        math.isfinite(scale) and MIN_SCALE <= abs(scale) <= MAX_SCALE
    ):
        raise InvalidPayload("bad_quant_params", f"{what}: scale {scale!r} out of range")
    if not _is_count(offset) or offset != bins // 2:
        raise InvalidPayload("bad_quant_params", f"{what}: offset {offset!r} != {bins // 2}")
    table = _tensor(lookup, f"{what} lookup", torch.float32, (bins,))
    return shift.to(torch.float32).reshape(1), table


def _to_compressed(state: Mapping[str, Any], layout: Layout) -> dict[str, torch.Tensor]:
    idx, codes, shifts, lookups = [], [], [], []
    for p in layout.params:
        idx.append(_tensor(state[p.name + "idxs"], p.name + "idxs", torch.uint8, (p.idx_bytes,)))
        codes.append(_tensor(state[p.name + "vals"], p.name + "vals", torch.uint8, p.vals_shape))
        shift, lookup = _quant(state[p.name + "quant_params"], p, layout.bins)
        shifts.append(shift)
        lookups.append(lookup)
    if not all(math.isfinite(peak(t)) for t in (*shifts, *lookups)):
        raise InvalidPayload("non_finite", "a shift or lookup table holds NaN or inf")
    flat = torch.cat(codes)
    if flat.numel() and int(flat.max()) >= layout.bins:
        raise InvalidPayload("bad_value_code", f"a value code >= {layout.bins}")
    bits = packing.bit_width(layout.bins)
    return {
        # every parameter's entry count is even, so its packed bytes end on a pair boundary
        # and the concatenation is the packed stream of all entries
        "idx": torch.cat(idx),
        "val": packing.pack(flat, bits),
        "shift": torch.cat(shifts),
        "lookup": torch.stack(lookups),
    }
