"""A neuron's own resume point on local disk: model, error buffer, window and step.

Written atomically every window (temp file, fsync, rename), so a neuron killed at any point
restarts from its last completed window. Network checkpoints (`core/checkpoints`), which let
other neurons join, are separate; this file only spares a restarted neuron a cold start.
Safetensors, never pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs
import safetensors.torch
import torch
from torch import nn

_MODEL = "model/"
_ERROR = "error/"


@attrs.frozen
class ResumePoint:
    window: int
    global_step: int


def save(
    path: Path,
    model: nn.Module,
    error: dict[str, torch.Tensor] | None,
    point: ResumePoint,
) -> None:
    tensors = {_MODEL + n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}
    for name, t in (error or {}).items():
        tensors[_ERROR + name] = t.detach().cpu().contiguous()
    meta = {"point": json.dumps(attrs.asdict(point))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(safetensors.torch.save(tensors, metadata=meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, model: nn.Module) -> tuple[ResumePoint, dict[str, torch.Tensor] | None] | None:
    """Restore `model` from `path`; returns the point and error buffer, or None if absent."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    tensors = safetensors.torch.load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header_len])["__metadata__"]
    point = ResumePoint(**json.loads(meta["point"]))
    model.load_state_dict(
        {n.removeprefix(_MODEL): t for n, t in tensors.items() if n.startswith(_MODEL)}
    )
    error = {n.removeprefix(_ERROR): t for n, t in tensors.items() if n.startswith(_ERROR)}
    return point, (error or None)
