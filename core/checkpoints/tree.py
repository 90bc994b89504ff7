"""A faithful, pickle-free encoding of nested training state: JSON plus a bag of tensors.

`split(obj)` turns a state dict (model, `torch.optim` optimizer, LR scheduler, any nesting of
dicts, lists and tuples) into a JSON-ready tree whose tensors are replaced by references, and a
`{name: tensor}` dict for safetensors. `join(tree, tensors)` inverts it exactly: every type
(int vs float vs bool, tuple vs list, int dict keys), every float bit pattern, dict order and
tensor aliasing survive. Anything else (numpy values, callables, custom objects) is refused
when saving: the alternative would be pickle.

Encoding (tags start with `$`, so a plain object needs no escaping unless a key does):

    None, bool, int, str, finite float   -> themselves
    nan / inf / -inf                     -> {"$float": "nan" | "inf" | "-inf"}
    list                                 -> [ ... ]
    tuple                                -> {"$tuple": [ ... ]}
    dict, every key a str not starting $ -> { ... }
    any other dict (int keys, ...)       -> {"$dict": [[key, value], ...]}
    torch.Tensor                         -> {"$tensor": "name"}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["TreeError", "join", "split"]

_SCALARS = (type(None), bool, int, str)
_FLOAT_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class TreeError(ValueError):
    """A state cannot be encoded, or a stored tree is malformed."""


def split(obj: Any, prefix: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """`obj` as a JSON-ready tree and the tensors it references, named under `prefix`."""
    tensors: dict[str, torch.Tensor] = {}
    names_by_id: dict[int, str] = {}

    def name_for(path: list[str]) -> str:
        base = "/".join([prefix, *path]) if path else prefix
        name, n = base, 1
        while name in tensors:  # a key containing "/" could collide with a nested path
            name, n = f"{base}#{n}", n + 1
        return name

    def walk(value: Any, path: list[str]) -> Any:
        kind = type(value)
        if kind in _SCALARS:
            return value
        if kind is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, torch.Tensor):
            # The same tensor object twice (tied weights) is stored once and comes back shared.
            known = names_by_id.get(id(value))
            if known is not None:
                return {"$tensor": known}
            name = name_for(path)
            names_by_id[id(value)] = name
            tensors[name] = value
            return {"$tensor": name}
        if kind is list:
            return [walk(v, [*path, str(i)]) for i, v in enumerate(value)]
        if kind is tuple:
            return {"$tuple": [walk(v, [*path, str(i)]) for i, v in enumerate(value)]}
        if kind is dict or (isinstance(value, Mapping) and kind.__module__ == "collections"):
            if all(type(k) is str and not k.startswith("$") for k in value):
                return {k: walk(v, [*path, k]) for k, v in value.items()}
            for k in value:
                if type(k) not in _SCALARS and type(k) is not float:
                    raise TreeError(f"{_where(prefix, path)}: unsupported key type {type(k)}")
            return {"$dict": [[walk(k, path), walk(v, [*path, str(k)])] for k, v in value.items()]}
        raise TreeError(
            f"{_where(prefix, path)}: cannot store a {kind.__module__}.{kind.__qualname__} "
            "without pickle; convert it to a tensor, number, string, list or dict"
        )

    tree = walk(obj, [])
    return tree, tensors


def join(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The state `split` encoded as `tree`; every tensor in `tensors` must be referenced."""
    used: set[str] = set()

    def walk(node: Any) -> Any:
        kind = type(node)
        if kind in _SCALARS or kind is float:
            return node
        if kind is list:
            return [walk(v) for v in node]
        if kind is not dict:
            raise TreeError(f"unexpected JSON value of type {kind.__name__}")
        if len(node) == 1:
            ((tag, inner),) = node.items()
            if tag.startswith("$"):
                return tagged(tag, inner)
        for key in node:
            if key.startswith("$"):
                raise TreeError(f"unknown tag {key!r}")
        return {k: walk(v) for k, v in node.items()}

    def tagged(tag: str, inner: Any) -> Any:
        if tag == "$tensor":
            if type(inner) is not str or inner not in tensors:
                raise TreeError(f"reference to a missing tensor {inner!r}")
            used.add(inner)
            return tensors[inner]
        if tag == "$float":
            if inner not in _FLOAT_WORDS:
                raise TreeError(f"bad $float {inner!r}")
            return _FLOAT_WORDS[inner]
        if tag == "$tuple" and type(inner) is list:
            return tuple(walk(v) for v in inner)
        if tag == "$dict" and type(inner) is list:
            out = {}
            for pair in inner:
                if type(pair) is not list or len(pair) != 2:
                    raise TreeError("a $dict entry is not a [key, value] pair")
                key = walk(pair[0])
                if type(key) not in _SCALARS and type(key) is not float:
                    raise TreeError(f"unsupported dict key {key!r}")
                out[key] = walk(pair[1])
            return out
        raise TreeError(f"unknown or malformed tag {tag!r}")

    try:
        result = walk(tree)
    except RecursionError:
        raise TreeError("state tree nested too deeply") from None
    unused = set(tensors) - used
    if unused:
        raise TreeError(f"{len(unused)} stored tensors are not referenced, e.g. {min(unused)!r}")
    return result


def _where(prefix: str, path: list[str]) -> str:
    return "/".join([prefix, *path])
