"""Tensors from a `torch.save` archive's storages, each view checked against its storage.

A storage entry is used at one dtype, holds exactly `numel` elements of it, and is
referenced by the pickle (an entry nobody references is refused: torch never writes one).
A view (offset, size, stride) must lie inside its storage, and may not address more
elements than the storage holds, so a tiny archive cannot describe a huge broadcast tensor.
Views of one storage share memory, as they do after `torch.load`.

`load(data)` is the whole safe replacement for `torch.load(weights_only=True)` on such
archives: bounded zip, allow-listed pickle, checked tensors (on the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from core.invalid import InvalidPayload
from core.templar import pickle_walk, torchzip
from core.templar.pickle_walk import StorageRef, TensorRef


def load(data: bytes, limits: torchzip.ArchiveLimits | None = None) -> Any:
    """The value a `torch.save` archive holds, with real tensors; InvalidPayload for any
    archive, pickle or tensor outside what this package reads."""
    try:
        archive = torchzip.read(data, limits)
        tree = pickle_walk.walk(archive.pickle)
        return build(tree, archive.storages)
    except InvalidPayload:
        raise
    except Exception as exc:  # the last guard: no other exception type leaves load
        raise InvalidPayload("malformed", f"{type(exc).__name__}: {exc}") from None


def build(tree: Any, storages: Mapping[str, bytearray]) -> Any:
    """`tree` with every `TensorRef` replaced by a tensor over its storage's bytes."""
    bases: dict[str, torch.Tensor] = {}
    used: dict[str, StorageRef] = {}
    out = _replace(tree, lambda ref: _tensor(ref, storages, bases, used))
    unused = set(storages) - set(used)
    if unused:
        raise InvalidPayload("bad_storage", f"{len(unused)} storage entries never referenced")
    return out


def _replace(value: Any, make) -> Any:
    # The tree's depth is bounded by pickle_walk, so plain recursion is safe.
    if isinstance(value, TensorRef):
        return make(value)
    if isinstance(value, dict):
        return {k: _replace(v, make) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, make) for v in value]
    if isinstance(value, tuple):
        return tuple(_replace(v, make) for v in value)
    return value


def _tensor(
    ref: TensorRef,
    storages: Mapping[str, bytearray],
    bases: dict[str, torch.Tensor],
    used: dict[str, StorageRef],
) -> torch.Tensor:
    s = ref.storage
    before = used.get(s.key)
    if before is None:
        raw = storages.get(s.key)
        if raw is None:
            raise InvalidPayload("bad_storage", f"storage {s.key} has no data/{s.key} entry")
        itemsize = torch.empty((), dtype=s.dtype).element_size()
        if len(raw) != s.numel * itemsize:
            raise InvalidPayload(
                "bad_storage",
                f"storage {s.key}: {len(raw)} bytes for {s.numel} x {itemsize}-byte elements",
            )
        used[s.key] = s
        bases[s.key] = (
            torch.frombuffer(raw, dtype=s.dtype)
            if s.numel
            else torch.empty(0, dtype=s.dtype)  # frombuffer refuses empty buffers
        )
    elif before != s:
        raise InvalidPayload("bad_storage", f"storage {s.key} used as two different storages")
    numel = math.prod(ref.size)
    if numel > s.numel:
        raise InvalidPayload("bad_tensor", f"a view of {numel} elements of a {s.numel} storage")
    if not numel:  # addresses nothing, whatever its offset (torch.save writes such views)
        return torch.empty_strided(ref.size, ref.stride, dtype=s.dtype)
    last = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride, strict=True))
    if last >= s.numel:
        raise InvalidPayload("bad_tensor", f"a view reaching element {last} of {s.numel}")
    return torch.as_strided(bases[s.key], ref.size, ref.stride, ref.offset)
