"""Object names. The protocol version is part of every name, so incompatible releases never
read each other's objects.

    gradient-{window}-{uid}-v{version}.safetensors
    aggregator-{window}-v{version}.safetensors
    peers-{window}-v{version}.json
    peers-latest-v{version}.json                      (which peer lists exist, newest first)
    start_window-v{version}.json
    debug-{window}-{uid}-v{version}.json
    checkpoints/v{version}/{window}-{uid}/{file}      (manifest.json written last)
"""

from __future__ import annotations

import enum
import re
from typing import Protocol

import attrs

# A version as it may appear in a key (every key scheme parses it with this pattern).
VERSION_PATTERN = r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}"
_VERSION_RE = re.compile(rf"^{VERSION_PATTERN}$")
_V = rf"(?P<version>{VERSION_PATTERN})"
_FILE_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
MANIFEST = "manifest.json"


class KeyKind(enum.Enum):
    GRADIENT = "gradient"
    AGGREGATOR = "aggregator"
    PEERS = "peers"
    START_WINDOW = "start_window"
    CHECKPOINT = "checkpoint"
    DEBUG = "debug"


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise ValueError(f"invalid protocol version {version!r}")
    return version


def nonneg(name: str, value: int) -> int:
    """`value`, a non-negative int (not a bool) for a window or uid in a name."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


@attrs.frozen
class ParsedKey:
    kind: KeyKind
    version: str
    window: int | None = None
    uid: int | None = None
    file: str | None = None


def gradient(window: int, uid: int, version: str) -> str:
    nonneg("window", window)
    nonneg("uid", uid)
    return f"gradient-{window}-{uid}-v{check_version(version)}.safetensors"


def aggregator(window: int, version: str) -> str:
    nonneg("window", window)
    return f"aggregator-{window}-v{check_version(version)}.safetensors"


def peers(window: int, version: str) -> str:
    nonneg("window", window)
    return f"peers-{window}-v{check_version(version)}.json"


def peers_latest(version: str) -> str:
    """The pointer naming a validator's newest peer lists; `parse` does not recognise it, so
    the janitor never deletes it."""
    return f"peers-latest-v{check_version(version)}.json"


def start_window(version: str) -> str:
    return f"start_window-v{check_version(version)}.json"


def debug(window: int, uid: int, version: str) -> str:
    """A neuron's per-window debug dict (JSON, never pickle); removed by the janitor."""
    nonneg("window", window)
    nonneg("uid", uid)
    return f"debug-{window}-{uid}-v{check_version(version)}.json"


def checkpoint_prefix(version: str) -> str:
    """Prefix under which all checkpoints of `version` live."""
    return f"checkpoints/v{check_version(version)}/"


def checkpoint_dir(window: int, uid: int, version: str) -> str:
    nonneg("window", window)
    nonneg("uid", uid)
    return f"{checkpoint_prefix(version)}{window}-{uid}/"


def checkpoint_file(window: int, uid: int, version: str, file: str) -> str:
    if not _FILE_RE.fullmatch(file):
        raise ValueError(f"invalid checkpoint file name {file!r}")
    return checkpoint_dir(window, uid, version) + file


def checkpoint_manifest(window: int, uid: int, version: str) -> str:
    return checkpoint_file(window, uid, version, MANIFEST)


_PATTERNS: list[tuple[KeyKind, re.Pattern[str]]] = [
    (
        KeyKind.GRADIENT,
        re.compile(rf"^gradient-(?P<window>[0-9]+)-(?P<uid>[0-9]+)-v{_V}\.safetensors$"),
    ),
    (
        KeyKind.AGGREGATOR,
        re.compile(rf"^aggregator-(?P<window>[0-9]+)-v{_V}\.safetensors$"),
    ),
    (KeyKind.PEERS, re.compile(rf"^peers-(?P<window>[0-9]+)-v{_V}\.json$")),
    (KeyKind.START_WINDOW, re.compile(rf"^start_window-v{_V}\.json$")),
    (
        KeyKind.DEBUG,
        re.compile(rf"^debug-(?P<window>[0-9]+)-(?P<uid>[0-9]+)-v{_V}\.json$"),
    ),
    (
        KeyKind.CHECKPOINT,
        re.compile(
            rf"^checkpoints/v{_V}/(?P<window>[0-9]+)-(?P<uid>[0-9]+)/"
            r"(?P<file>[0-9A-Za-z][0-9A-Za-z._-]{0,127})$"
        ),
    ),
]


def canonical_int(text: str | None) -> int | None:
    """A decimal without leading zeros: one window has one name, so no two keys alias."""
    if text is None:
        return None
    if len(text) > 1 and text.startswith("0"):
        raise ValueError("leading zero")
    return int(text)


def parse(key: str) -> ParsedKey | None:
    """The parts of a protocol key, or None for any other name (never raises)."""
    for kind, pattern in _PATTERNS:
        match = pattern.fullmatch(key)
        if match is None:
            continue
        parts = match.groupdict()
        try:
            window = canonical_int(parts.get("window"))
            uid = canonical_int(parts.get("uid"))
        except ValueError:
            return None
        return ParsedKey(
            kind=kind, version=parts["version"], window=window, uid=uid, file=parts.get("file")
        )
    return None


def for_kind(kind: KeyKind, window: int, version: str, uid: int | None = None) -> str:
    """The object name of a per-window payload of `kind` (gradients need the uploader's uid)."""
    if kind is KeyKind.GRADIENT:
        if uid is None:
            raise ValueError("a gradient key needs a uid")
        return gradient(window, uid, version)
    if kind is KeyKind.AGGREGATOR:
        return aggregator(window, version)
    if kind is KeyKind.PEERS:
        return peers(window, version)
    raise ValueError(f"{kind} is not a per-window payload")


class KeyScheme(Protocol):
    """How one protocol profile names its objects (core/profiles.py picks one).

    Every name carries the protocol version. `peers_latest` is None for a scheme without a
    peer-list pointer; `peers_prefix` is what a listing of a validator's peer lists starts
    with. Checkpoints are ours in every profile, so every scheme names them as `checkpoint_*`
    here do. `parse` recognises exactly the names the scheme writes and never raises.
    """

    name: str
    peers_prefix: str

    def gradient(self, window: int, uid: int, version: str) -> str: ...
    def aggregator(self, window: int, version: str) -> str: ...
    def peers(self, window: int, version: str) -> str: ...
    def peers_latest(self, version: str) -> str | None: ...
    def start_window(self, version: str) -> str: ...
    def debug(self, window: int, uid: int, version: str) -> str: ...
    def parse(self, key: str) -> ParsedKey | None: ...
    def for_kind(self, kind: KeyKind, window: int, version: str, uid: int | None = None) -> str: ...


@attrs.frozen
class NativeKeys:
    """This project's names (the module's functions above)."""

    name: str = "native"
    peers_prefix: str = "peers-"

    def gradient(self, window: int, uid: int, version: str) -> str:
        return gradient(window, uid, version)

    def aggregator(self, window: int, version: str) -> str:
        return aggregator(window, version)

    def peers(self, window: int, version: str) -> str:
        return peers(window, version)

    def peers_latest(self, version: str) -> str | None:
        return peers_latest(version)

    def start_window(self, version: str) -> str:
        return start_window(version)

    def debug(self, window: int, uid: int, version: str) -> str:
        return debug(window, uid, version)

    def parse(self, key: str) -> ParsedKey | None:
        return parse(key)

    def for_kind(self, kind: KeyKind, window: int, version: str, uid: int | None = None) -> str:
        return for_kind(kind, window, version, uid)


NATIVE = NativeKeys()
