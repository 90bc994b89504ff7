"""A miner's per-window debug object: what it trained, uploaded and gathered, as small JSON.

The seed has miners share debug information and metrics; validators read them to compare a
miner's own account with what they measured, and the janitor prunes them like gradients
(`debug_retention`). The object is untrusted input like any other: size-bounded before the
download, strict JSON with exactly the documented keys, every number checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import attrs

from core import keys, strict_json
from ports import ObjectStore

SCHEMA = 1
MAX_DEBUG_BYTES = 4096
_MAX_COUNT = 2**53 - 1


class InvalidDebug(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid debug object: {reason}")
        self.reason = reason


@attrs.frozen(kw_only=True)
class GatherSummary:
    asked: int = 0
    used: int = 0
    skipped: int = 0
    seconds: float = 0.0


@attrs.frozen(kw_only=True)
class DebugReport:
    window: int
    uid: int
    step: int
    loss: float | None
    upload_bytes: int
    gather: GatherSummary = attrs.Factory(GatherSummary)

    def to_json(self, version: str) -> bytes:
        body = {
            "schema": SCHEMA,
            "version": version,
            "window": self.window,
            "uid": self.uid,
            "step": self.step,
            "loss": self.loss,
            "upload_bytes": self.upload_bytes,
            "gather": attrs.asdict(self.gather),
        }
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def _object(value: object, keys_: frozenset[str], what: str) -> Mapping:
    if not isinstance(value, dict):
        raise InvalidDebug(f"{what} is not a JSON object")
    if set(value) != keys_:
        raise InvalidDebug(f"{what} keys are {sorted(value)}, not {sorted(keys_)}")
    return value


def _count(body: Mapping, name: str) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_COUNT:
        raise InvalidDebug(f"{name} must be an integer in [0, 2**53 - 1]")
    return value


def _number(body: Mapping, name: str, *, optional: bool = False) -> float | None:
    value = body[name]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidDebug(f"{name} must be a finite number")
    return float(value)


_TOP = frozenset({"schema", "version", "window", "uid", "step", "loss", "upload_bytes", "gather"})
_GATHER = frozenset(f.name for f in attrs.fields(GatherSummary))


def parse_debug(data: bytes, version: str) -> DebugReport:
    """Decode and validate a debug object; raises `InvalidDebug`."""
    if len(data) > MAX_DEBUG_BYTES:
        raise InvalidDebug(f"{len(data)} bytes is over {MAX_DEBUG_BYTES}")
    try:
        body = strict_json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidDebug(f"not JSON: {exc}") from None
    body = _object(body, _TOP, "the body")
    if body["schema"] != SCHEMA or body["version"] != version:
        raise InvalidDebug(f"schema {body['schema']!r} / version {body['version']!r}")
    gather = _object(body["gather"], _GATHER, "gather")
    return DebugReport(
        window=_count(body, "window"),
        uid=_count(body, "uid"),
        step=_count(body, "step"),
        loss=_number(body, "loss", optional=True),
        upload_bytes=_count(body, "upload_bytes"),
        gather=GatherSummary(
            asked=_count(gather, "asked"),
            used=_count(gather, "used"),
            skipped=_count(gather, "skipped"),
            seconds=_number(gather, "seconds") or 0.0,
        ),
    )


async def post_debug(
    store: ObjectStore, report: DebugReport, version: str, scheme: keys.KeyScheme = keys.NATIVE
) -> None:
    key = scheme.debug(report.window, report.uid, version)
    await store.put(key, report.to_json(version))


async def get_debug(
    store: ObjectStore, window: int, uid: int, version: str, scheme: keys.KeyScheme = keys.NATIVE
) -> DebugReport:
    """A peer's debug object for `window`; raises `InvalidDebug` or a `StorageError`.

    The object must name the window and uid its key does, so one upload cannot stand in for
    another window's.
    """
    blob = await store.get(scheme.debug(window, uid, version), max_bytes=MAX_DEBUG_BYTES)
    report = parse_debug(blob.data, version)
    if (report.window, report.uid) != (window, uid):
        raise InvalidDebug(f"it names window {report.window} uid {report.uid}")
    return report
