"""Applying a loaded optimizer and scheduler state: checked against the local ones, all or
nothing; and refusing another optimizer's or scheduler's shards from their headers.

A checkpoint's optimizer section comes from another process. Before `load_state_dict` sees
it, it must have the local optimizer's param groups (same count, same parameter indices,
the same hyperparameter names with values of the same kind), and per-parameter state only
for parameters that exist, each tensor either the parameter's shape and dtype or a scalar
(Adam's `step`), every number finite. A scheduler state must have the structure of the local
scheduler's own `state_dict()`. Anything else is a `Mismatch` with the reason, raised before
the optimizer, the scheduler or the model changes.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from core.checkpoints.fit import Mismatch, check_fits, load_into
from core.checkpoints.shards import Layout, ShardError
from core.checkpoints.tree import split

__all__ = [
    "apply_training_state",
    "check_optimizer",
    "check_scheduler",
    "optimizer_headers",
    "scheduler_headers",
]

# A per-parameter state with more entries than this is no optimizer torch ships (Adam has 3,
# AMSGrad 4): refusing it bounds what a hostile section can make load_state_dict hold.
MAX_STATE_ENTRIES = 16
_NUMBER = (int, float)
Accept = Callable[[str, torch.dtype, tuple[int, ...]], None]


def _finite_number(value: Any, where: str) -> None:
    if type(value) is float and not math.isfinite(value):
        raise Mismatch(f"{where} is {value}")


def _same_kind(want: Any, got: Any, where: str) -> None:
    """`got` has the structure and leaf kinds of `want` (numbers may be int or float)."""
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise Mismatch(f"{where} is not a tensor")
        if got.shape != want.shape or got.dtype != want.dtype:
            raise Mismatch(
                f"{where} is {got.dtype} {list(got.shape)}, locally {want.dtype} {list(want.shape)}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise Mismatch(f"{where} is not finite")
        return
    if type(want) is bool or want is None or type(want) is str:
        if type(got) is not type(want):
            raise Mismatch(f"{where} is a {type(got).__name__}, locally a {type(want).__name__}")
        return
    if type(want) in _NUMBER:
        if type(got) not in _NUMBER:
            raise Mismatch(f"{where} is a {type(got).__name__}, locally a number")
        _finite_number(got, where)
        return
    if isinstance(want, (list, tuple)):
        if type(got) is not type(want) or len(got) != len(want):
            raise Mismatch(f"{where} is not a {type(want).__name__} of {len(want)}")
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            _same_kind(w, g, f"{where}[{i}]")
        return
    if isinstance(want, Mapping):
        if not isinstance(got, Mapping) or set(got) != set(want):
            extra = sorted(map(str, set(got) - set(want))) if isinstance(got, Mapping) else []
            missing = sorted(map(str, set(want) - set(got))) if isinstance(got, Mapping) else []
            raise Mismatch(f"{where} has other keys (missing {missing}, unexpected {extra})")
        for key, w in want.items():
            _same_kind(w, got[key], f"{where}[{key!r}]")
        return
    raise Mismatch(f"{where}: the local value is a {type(want).__name__}, which is not checked")


def _parameters(optimizer: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    """The parameters by the index `state_dict()` gives them."""
    out: dict[int, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            out[len(out)] = p
    return out


def check_optimizer(optimizer: torch.optim.Optimizer, state: Any) -> None:
    """Raise `Mismatch` unless `state` is a state of `optimizer` (see the module's doc)."""
    if not isinstance(state, Mapping) or set(state) != {"state", "param_groups"}:
        raise Mismatch("the optimizer state is not {'state': ..., 'param_groups': ...}")
    local = optimizer.state_dict()["param_groups"]
    groups = state["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(local):
        raise Mismatch(f"the optimizer state has not the local {len(local)} param groups")
    for i, (want, got) in enumerate(zip(local, groups, strict=True)):
        ids = got.get("params") if isinstance(got, Mapping) else None
        whole = isinstance(ids, list) and all(type(n) is int for n in ids)  # True is not 1
        if not whole or ids != want["params"]:
            raise Mismatch(f"param group {i} holds other parameters than the local one")
        _same_kind(
            {k: v for k, v in want.items() if k != "params"},
            {k: v for k, v in got.items() if k != "params"},
            f"param group {i}",
        )
    params = _parameters(optimizer)
    per_param = state["state"]
    if not isinstance(per_param, Mapping):
        raise Mismatch("the optimizer's per-parameter state is not a dict")
    for index, entries in per_param.items():
        param = params.get(index) if type(index) is int else None
        if param is None:
            raise Mismatch(f"optimizer state for a parameter {index!r} the optimizer lacks")
        if not isinstance(entries, Mapping) or len(entries) > MAX_STATE_ENTRIES:
            raise Mismatch(f"optimizer state of parameter {index} is not a small dict")
        for key, value in entries.items():
            where = f"optimizer state {index}[{key!r}]"
            if type(key) is not str:
                raise Mismatch(f"{where}: the key is not a string")
            _state_value(param, value, where)


def _state_value(param: torch.Tensor, value: Any, where: str) -> None:
    if isinstance(value, torch.Tensor):
        if value.shape == param.shape and value.dtype == param.dtype:
            pass
        elif value.numel() == 1 and value.dim() <= 1:
            pass  # a per-parameter scalar such as Adam's step count
        else:
            raise Mismatch(
                f"{where} is {value.dtype} {list(value.shape)}: neither a scalar nor the "
                f"parameter's shape and dtype ({param.dtype} {list(param.shape)})"
            )
        if (value.is_floating_point() or value.is_complex()) and not torch.isfinite(value).all():
            raise Mismatch(f"{where} is not finite")
        return
    if type(value) is bool or value is None:
        return
    if type(value) in _NUMBER:
        _finite_number(value, where)
        return
    raise Mismatch(f"{where} is a {type(value).__name__}")


def check_scheduler(scheduler: Any, state: Any) -> None:
    """Raise `Mismatch` unless `state` has the structure of `scheduler.state_dict()` and a
    step count that is a count."""
    _same_kind(scheduler.state_dict(), state, "scheduler")
    for key in ("last_epoch", "_step_count"):
        value = state.get(key) if isinstance(state, Mapping) else None
        if value is not None and (type(value) is not int or value < -1):
            raise Mismatch(f"scheduler[{key!r}] is {value!r}, not a step count")


def _optimizer_backup(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return copy.deepcopy(optimizer.state_dict())


def apply_training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    model_state: Mapping[str, Any],
    optimizer_state: Any,
    scheduler_state: Any,
) -> None:
    """Load all three after checking all three; on any failure each is left as it was."""
    if optimizer_state is None:
        raise Mismatch("no optimizer state")
    if scheduler_state is None:
        raise Mismatch("no scheduler state")
    check_fits(model, model_state)
    check_optimizer(optimizer, optimizer_state)
    check_scheduler(scheduler, scheduler_state)
    optimizer_before = _optimizer_backup(optimizer)
    scheduler_before = copy.deepcopy(scheduler.state_dict())
    live = model.state_dict()
    model_before = {
        k: v.detach().to("cpu", copy=True) for k, v in live.items() if isinstance(v, torch.Tensor)
    }
    try:
        load_into(model, model_state)
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
    except Exception:
        with torch.no_grad():
            for name, saved in model_before.items():
                live[name].copy_(saved)
        optimizer.load_state_dict(optimizer_before)
        scheduler.load_state_dict(scheduler_before)
        raise


# Shard headers: what a joiner may download for these sections ---------------------------


def _header_check(accept: Accept) -> Callable[[], Callable[[Layout], None]]:
    """Per candidate, a check of each shard header: every tensor accepted by `accept`, and
    none named in two shards (shards are parsed on the store's threads)."""

    def fresh() -> Callable[[Layout], None]:
        seen: set[str] = set()
        lock = threading.Lock()

        def check(layout: Layout) -> None:
            names = set()
            for name, dtype, shape in layout:
                accept(name, dtype, tuple(shape))
                names.add(name)
            with lock:
                if names & seen:
                    raise ShardError(f"tensor {min(names & seen)!r} appears in two shards")
                seen.update(names)

        return check

    return fresh


def _exact(prefix: str, state: Any) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The tensors `state` stores under `prefix`, by the names `tree.split` gives them."""
    _, tensors = split(state, prefix)
    return {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}


def optimizer_headers(optimizer: torch.optim.Optimizer) -> Callable[[], Callable[[Layout], None]]:
    """A header check (`load_candidates(expect_headers=)`) for the `optimizer` section: a
    tensor of the param groups only where the local ones have that tensor; per-parameter
    state `optimizer/state/{index}/{key}` only for a parameter that exists, of its shape and
    dtype or a scalar, at most `MAX_STATE_ENTRIES` a parameter. The section then allocates
    at most that many copies of the model."""
    params = _parameters(optimizer)
    groups = _exact("optimizer/param_groups", optimizer.state_dict()["param_groups"])
    prefix = "optimizer/state/"

    def fresh() -> Callable[[Layout], None]:
        entries: dict[int, int] = {}
        lock = threading.Lock()

        def accept(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
            if name in groups:
                if groups[name] != (dtype, shape):
                    raise ShardError(f"tensor {name!r} is {dtype} {list(shape)}, not the local one")
                return
            index, _, key = name.removeprefix(prefix).partition("/")
            param = params.get(int(index)) if index.isdecimal() and len(index) < 10 else None
            if not name.startswith(prefix) or param is None or not key or "/" in key:
                raise ShardError(f"tensor {name!r} is no optimizer state of this model")
            scalar = len(shape) <= 1 and math.prod(shape) == 1
            if not scalar and (shape, dtype) != (tuple(param.shape), param.dtype):
                raise ShardError(
                    f"tensor {name!r} is {dtype} {list(shape)}: neither a scalar nor the "
                    f"parameter's shape and dtype ({param.dtype} {list(param.shape)})"
                )
            with lock:
                entries[int(index)] = entries.get(int(index), 0) + 1
                if entries[int(index)] > MAX_STATE_ENTRIES:
                    raise ShardError(f"more than {MAX_STATE_ENTRIES} tensors for parameter {index}")

        return _header_check(accept)()

    return fresh


def scheduler_headers(scheduler: Any) -> Callable[[], Callable[[Layout], None]]:
    """A header check for the `scheduler` section: only the tensors the local scheduler's
    own state has, with their shapes and dtypes (most schedulers have none)."""
    expected = _exact("scheduler", scheduler.state_dict())

    def accept(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        if expected.get(name) != (dtype, shape):
            raise ShardError(f"tensor {name!r} is not in the local scheduler's state")

    return _header_check(accept)
