"""Applying a loaded model state: all of it after every check, or none of it.

A checkpoint that verified is still another validator's claim. Before a tensor is copied,
the state must name exactly the model's keys with the model's shapes and dtypes, and its
parameters must be finite (a parameter is never NaN or Inf in a trajectory worth joining;
buffers may be, e.g. a -inf attention mask). What `load_state_dict` could still raise after
those checks (a hook, a device error) restores the previous values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["Mismatch", "check_fits", "expected_layout", "load_into"]


class Mismatch(ValueError):
    """A model state that is not a state of this model."""


def _some(names: set[str]) -> str:
    return f"{len(names)}, e.g. {min(names)!r}"


def expected_layout(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The shapes and dtypes a loader may check shard headers against (`expect_model`)."""
    return {
        k: (tuple(v.shape), v.dtype)
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }


def check_fits(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Raise `Mismatch` unless `state` could replace `model.state_dict()` exactly."""
    reference = model.state_dict()
    missing = set(reference) - set(state)
    if missing:
        raise Mismatch(f"missing keys: {_some(missing)}")
    unexpected = set(state) - set(reference)
    if unexpected:
        raise Mismatch(f"unexpected keys: {_some(unexpected)}")
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    for name, want in reference.items():
        if not isinstance(want, torch.Tensor):
            continue  # a module's extra state: its own load_state_dict judges it
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise Mismatch(f"{name!r} is not a tensor")
        if got.shape != want.shape:
            raise Mismatch(f"{name!r} has shape {list(got.shape)}, the model {list(want.shape)}")
        if got.dtype != want.dtype:
            raise Mismatch(f"{name!r} has dtype {got.dtype}, the model {want.dtype}")
        if name in parameters and got.is_floating_point() and not torch.isfinite(got).all():
            raise Mismatch(f"{name!r} is not finite")


def load_into(model: nn.Module, state: Mapping[str, Any]) -> None:
    """`model.load_state_dict(state)` after `check_fits`; on any failure the model is left
    as it was. Holds one CPU copy of the model's state while it runs."""
    check_fits(model, state)
    live = model.state_dict()  # shares memory with the model: restoring writes through
    backup = {
        k: v.detach().to("cpu", copy=True) for k, v in live.items() if isinstance(v, torch.Tensor)
    }
    try:
        model.load_state_dict(state, strict=True)
    except Exception:
        with torch.no_grad():
            for name, saved in backup.items():
                live[name].copy_(saved)
        raise
