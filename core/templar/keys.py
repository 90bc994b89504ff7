"""Object names as Templar writes and reads them (docs/templar.md, "Keys and objects").

    gradient-{window}-{uid}-v{version}.pt        a miner's bucket
    debug-{window}-{uid}-v{version}.pt           a neuron's bucket
    aggregator-{window}-v{version}.pt            the aggregator bucket
    peers_{window}_v{version}.json               a validator's bucket (window: first effective)
    start_window_v{version}.json                 a validator's bucket

Templar's version is its release (`tplr.__version__`), taken from `hparams.version` here.
Templar has no peer-list pointer: readers list `peers_`. Checkpoints stay this project's
(`core.keys.checkpoint_*`): Templar's are torch distributed checkpoints, pickle inside, which
this library never reads, so the scheme names and parses ours.
"""

from __future__ import annotations

import re

import attrs

from core import keys
from core.keys import KeyKind, ParsedKey, canonical_int, check_version, nonneg

_V = rf"(?P<version>{keys.VERSION_PATTERN})"
_N = "[0-9]+"
_PATTERNS: tuple[tuple[KeyKind, re.Pattern[str]], ...] = (
    (KeyKind.GRADIENT, re.compile(rf"^gradient-(?P<window>{_N})-(?P<uid>{_N})-v{_V}\.pt$")),
    (KeyKind.DEBUG, re.compile(rf"^debug-(?P<window>{_N})-(?P<uid>{_N})-v{_V}\.pt$")),
    (KeyKind.AGGREGATOR, re.compile(rf"^aggregator-(?P<window>{_N})-v{_V}\.pt$")),
    (KeyKind.PEERS, re.compile(rf"^peers_(?P<window>{_N})_v{_V}\.json$")),
    (KeyKind.START_WINDOW, re.compile(rf"^start_window_v{_V}\.json$")),
)


@attrs.frozen
class TemplarKeys:
    name: str = "templar"
    peers_prefix: str = "peers_"

    def gradient(self, window: int, uid: int, version: str) -> str:
        w, u = nonneg("window", window), nonneg("uid", uid)
        return f"gradient-{w}-{u}-v{check_version(version)}.pt"

    def aggregator(self, window: int, version: str) -> str:
        return f"aggregator-{nonneg('window', window)}-v{check_version(version)}.pt"

    def peers(self, window: int, version: str) -> str:
        return f"peers_{nonneg('window', window)}_v{check_version(version)}.json"

    def peers_latest(self, version: str) -> str | None:
        return None

    def start_window(self, version: str) -> str:
        return f"start_window_v{check_version(version)}.json"

    def debug(self, window: int, uid: int, version: str) -> str:
        w, u = nonneg("window", window), nonneg("uid", uid)
        return f"debug-{w}-{u}-v{check_version(version)}.pt"

    def parse(self, key: str) -> ParsedKey | None:
        for kind, pattern in _PATTERNS:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            parts = match.groupdict()
            try:
                window, uid = canonical_int(parts.get("window")), canonical_int(parts.get("uid"))
            except ValueError:
                return None
            return ParsedKey(kind=kind, version=parts["version"], window=window, uid=uid)
        parsed = keys.parse(key)
        return parsed if parsed is not None and parsed.kind is KeyKind.CHECKPOINT else None

    def for_kind(self, kind: KeyKind, window: int, version: str, uid: int | None = None) -> str:
        if kind is KeyKind.GRADIENT:
            if uid is None:
                raise ValueError("a gradient key needs a uid")
            return self.gradient(window, uid, version)
        if kind is KeyKind.AGGREGATOR:
            return self.aggregator(window, version)
        if kind is KeyKind.PEERS:
            return self.peers(window, version)
        raise ValueError(f"{kind} is not a per-window payload")


TEMPLAR = TemplarKeys()
