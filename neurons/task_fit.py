"""Does this task's model fit the network's checkpoint? Checked before a neuron starts.

A neuron whose task builds another model than the network trains (another `task`, another
version of the user's factory) would upload gradients every peer refuses and could never
load a checkpoint. Read from the newest complete checkpoint's shard headers (names and
shapes; a few KB per shard, never the tensors), so the mistake is one line at start.
A checkpoint that cannot be read proves nothing and is left to the neuron's own sync.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import BinaryIO

import torch
from torch import nn

from core.checkpoints import CheckpointSettings
from core.checkpoints.latest import Latest, get_latest, validator_sources
from ports import Bucket, Metagraph, StoreOpener

log = logging.getLogger(__name__)
_SECTION = "model"


class HeaderError(ValueError):
    pass


def model_layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """State names and shapes as a checkpoint stores them: a tensor shared by two names
    (tied weights) is stored once, under the first."""
    seen: set[tuple[int, int]] = set()
    layout = {}
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if ident in seen and t.numel():
            continue
        seen.add(ident)
        layout[name] = tuple(t.shape)
    return layout


def _header_reader(limit: int) -> Callable[[BinaryIO], dict[str, tuple[int, ...]]]:
    def read(fh: BinaryIO) -> dict[str, tuple[int, ...]]:
        raw = fh.read(8)
        if len(raw) != 8:
            raise HeaderError("shard shorter than its header length")
        size = int.from_bytes(raw, "little")
        if size > limit:
            raise HeaderError(f"shard header of {size} bytes, over {limit}")
        header = json.loads(fh.read(size))
        if not isinstance(header, dict):
            raise HeaderError("shard header is not an object")
        out = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
                raise HeaderError(f"tensor {name!r} has no shape")
            out[name] = tuple(shape)
        return out

    return read


async def checkpoint_layout(
    latest: Latest, settings: CheckpointSettings
) -> dict[str, tuple[int, ...]]:
    """The model section's state names and shapes, from its shards' headers."""
    manifest = latest.manifest
    section = manifest.sections.get(_SECTION)
    if section is None:
        raise HeaderError("the checkpoint has no model section")
    prefix = f"{_SECTION}/"
    layout: dict[str, tuple[int, ...]] = {}
    for shard in section.shards:
        entry = manifest.file(shard)
        names = await latest.candidate.store.get_stream(
            manifest.key(shard), _header_reader(settings.max_header_bytes), max_bytes=entry.size
        )
        layout.update({n.removeprefix(prefix): s for n, s in names.items()})
    return layout


def differences(
    ours: Mapping[str, tuple[int, ...]], theirs: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """What keeps `theirs` from loading into `ours`, most telling first (empty: it fits)."""
    out = []
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if extra:
        out.append(f"{len(extra)} tensor(s) the task's model lacks, e.g. {extra[0]!r}")
    if missing:
        out.append(f"{len(missing)} of the task's tensor(s) absent, e.g. {missing[0]!r}")
    for name in sorted(set(ours) & set(theirs)):
        if tuple(ours[name]) != tuple(theirs[name]):
            out.append(f"{name!r} is {list(theirs[name])} there, {list(ours[name])} here")
            break
    return out


async def network_mismatch(
    model: nn.Module,
    *,
    metagraph: Metagraph,
    commitments: Mapping[int, Bucket],
    opener: StoreOpener,
    settings: CheckpointSettings,
    current_window: int,
) -> str | None:
    """Why `model` cannot be the network's (from its newest checkpoint), or None when it
    fits or there is nothing readable to compare with."""
    sources = validator_sources(metagraph, commitments, opener)
    try:
        latest = await get_latest(sources, settings, current_window=current_window)
        if latest is None:
            return None
        theirs = await checkpoint_layout(latest, settings)
    except Exception as exc:  # unreadable proves nothing: the neuron's sync judges it
        log.info("task check: the network's checkpoint is unreadable (%s); not compared", exc)
        return None
    found = differences(model_layout(model), theirs)
    if not found:
        return None
    where = f"window {latest.window}, {latest.candidate.source}"
    return f"the model does not match the network's checkpoint ({where}): {'; '.join(found)}"
