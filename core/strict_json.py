"""JSON read from untrusted peers: a repeated key is an error, not "the last one wins".

Two parsers disagreeing on which of two equal keys counts is how a forged header slips past
one check and is read differently by the next; refusing repeats removes the ambiguity.
"""

from __future__ import annotations

import json
from typing import Any


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads(text: str) -> Any:
    """`json.loads` that raises ValueError on a repeated object key."""
    return json.loads(text, object_pairs_hook=_unique)
