"""A neuron's own resume point on local disk: model, optimizer, scheduler, error buffer,
window and step.

Written atomically every window (temp file, fsync, rename), so a neuron killed at any point
restarts from its last completed window with the state a neuron that never stopped holds.
Network checkpoints (`core/checkpoints`), which let other neurons join, are separate; this
file only spares a restarted neuron a cold start. One safetensors file, never pickle: the
optimizer's and scheduler's structure are JSON trees in its metadata
(`core/checkpoints/tree.py`), their tensors beside the model's.

A file that cannot be read, or whose state is not one of this task's model, optimizer and
scheduler (another task, an older format), is refused with a WARNING and the neuron starts
as if it had none (it then loads the network's checkpoint): nothing is applied unless all of
it fits.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs
import safetensors
import safetensors.torch
import torch

from core.checkpoints import Mismatch, apply_training_state
from core.checkpoints.tree import join, split
from neurons.task import Training

log = logging.getLogger(__name__)

_MODEL = "model/"
_ERROR = "error/"
_TREES = ("optimizer", "scheduler")


@attrs.frozen
class ResumePoint:
    window: int = attrs.field(validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)])
    global_step: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)]
    )


class Unreadable(ValueError):
    """A resume file that is not one this neuron can continue from."""


def save(
    path: Path,
    training: Training,
    error: dict[str, torch.Tensor] | None,
    point: ResumePoint,
) -> None:
    tensors = {
        _MODEL + n: t.detach().cpu().contiguous() for n, t in training.model.state_dict().items()
    }
    for name, t in (error or {}).items():
        tensors[_ERROR + name] = t.detach().cpu().contiguous()
    meta = {"point": json.dumps(attrs.asdict(point))}
    for section, state in (
        ("optimizer", training.optimizer.state_dict()),
        ("scheduler", training.scheduler.state_dict()),
    ):
        tree, parts = split(state, section)
        meta[section] = json.dumps(tree, separators=(",", ":"), allow_nan=False)
        tensors.update({n: t.detach().cpu().contiguous() for n, t in parts.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(safetensors.torch.save(tensors, metadata=meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: Path) -> tuple[ResumePoint, dict[str, Any], dict[str, torch.Tensor]]:
    """The point, the model's, optimizer's and scheduler's states and the error buffer
    stored in `path`."""
    try:
        data = path.read_bytes()
        tensors = safetensors.torch.load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        point = ResumePoint(**json.loads(meta["point"]))
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as exc:
        raise Unreadable(f"not a resume file: {type(exc).__name__}: {exc}") from None
    missing = [s for s in _TREES if s not in meta]
    if missing:
        raise Unreadable(f"no {' and no '.join(missing)} state in it")
    states: dict[str, Any] = {
        "model": {n.removeprefix(_MODEL): t for n, t in tensors.items() if n.startswith(_MODEL)}
    }
    for section in _TREES:
        prefix = section + "/"
        try:
            states[section] = join(
                json.loads(meta[section]),
                {n: t for n, t in tensors.items() if n.startswith(prefix)},
            )
        except (ValueError, RecursionError) as exc:  # TreeError and JSON errors
            raise Unreadable(f"its {section} state is malformed: {exc}") from None
    known = (_MODEL, _ERROR, *(s + "/" for s in _TREES))
    stray = [n for n in tensors if not n.startswith(known)]
    if stray:
        raise Unreadable(f"{len(stray)} tensors of no section, e.g. {stray[0]!r}")
    error = {n.removeprefix(_ERROR): t for n, t in tensors.items() if n.startswith(_ERROR)}
    return point, states, error


def load(
    path: Path, training: Training
) -> tuple[ResumePoint, dict[str, torch.Tensor] | None] | None:
    """Restore `training` from `path`; the point and error buffer, or None when there is no
    usable file (absent, or refused with a WARNING saying why; `training` is then as it
    was)."""
    if not path.is_file():
        return None
    try:
        point, states, error = _read(path)
        _check_error(training, error)
        apply_training_state(
            training.model,
            training.optimizer,
            training.scheduler,
            model_state=states["model"],
            optimizer_state=states["optimizer"],
            scheduler_state=states["scheduler"],
        )
    except Exception as exc:  # whatever the file holds, a neuron starts; it just starts cold
        log.warning("resume file %s refused, starting without it: %s", path, exc)
        return None
    return point, (error or None)


def _check_error(training: Training, error: dict[str, torch.Tensor]) -> None:
    params = dict(training.model.named_parameters())
    for name, t in error.items():
        p = params.get(name)
        if p is None or t.shape != p.shape:
            raise Mismatch(f"error buffer {name!r} fits no parameter of the model")
