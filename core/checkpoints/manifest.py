"""The manifest: the one object that makes a checkpoint exist, and the advisory latest pointer.

A checkpoint directory is complete when its `manifest.json` parses and every file it lists is
present with the listed size and sha256. The manifest is written after every file, so a
reader that finds it finds the files. Parsing is strict and bounded: a manifest may come from
another validator's bucket.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from core import keys

__all__ = [
    "POINTER_FILE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "Section",
    "pointer_key",
]

SCHEMA = "templar-comms.checkpoint"
SCHEMA_VERSION = 1
POINTER_FILE = "latest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SECTION = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_MAX_HOTKEY = 128


class ManifestError(ValueError):
    """A manifest or pointer is malformed or not of this schema."""


def pointer_key(version: str) -> str:
    """`checkpoints/v{version}/latest.json`: outside any checkpoint directory, so `keys.parse`
    does not recognise it and the janitor never deletes it."""
    return keys.checkpoint_prefix(version) + POINTER_FILE


@attrs.frozen
class FileEntry:
    name: str
    size: int
    sha256: str


@attrs.frozen
class Section:
    """One part of the state: a JSON tree file and the safetensors shards it references."""

    tree: str
    shards: tuple[str, ...] = attrs.field(converter=tuple)


@attrs.frozen
class Manifest:
    version: str
    window: int
    uid: int
    global_step: int
    hotkey: str
    created_at: datetime
    sections: Mapping[str, Section]
    files: tuple[FileEntry, ...] = attrs.field(converter=tuple)
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def key(self, name: str) -> str:
        return keys.checkpoint_file(self.window, self.uid, self.version, name)

    def to_json(self) -> bytes:
        body = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "version": self.version,
            "window": self.window,
            "uid": self.uid,
            "global_step": self.global_step,
            "hotkey": self.hotkey,
            "created_at": self.created_at.isoformat(),
            "extra": dict(self.extra),
            "sections": {
                n: {"tree": s.tree, "shards": list(s.shards)} for n, s in self.sections.items()
            },
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(body, indent=1, allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        return _parse(body)


def _field(body: Mapping[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if type(value) is not kind:
        raise ManifestError(f"manifest field {name!r} missing or not a {kind.__name__}")
    if kind is int and value < 0:
        raise ManifestError(f"manifest field {name!r} is negative")
    return value


def _parse(body: Any) -> Manifest:
    if type(body) is not dict:
        raise ManifestError("manifest is not a JSON object")
    if body.get("schema") != SCHEMA:
        raise ManifestError(f"not a checkpoint manifest (schema {body.get('schema')!r})")
    if body.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"unsupported manifest schema_version {body.get('schema_version')!r}")
    try:
        version = keys.check_version(_field(body, "version", str))
        created_at = datetime.fromisoformat(_field(body, "created_at", str))
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    if created_at.tzinfo is None:
        raise ManifestError("created_at is not timezone-aware")
    hotkey = _field(body, "hotkey", str)
    if len(hotkey) > _MAX_HOTKEY:
        raise ManifestError("hotkey too long")
    files = []
    for entry in _field(body, "files", list):
        if type(entry) is not dict or set(entry) != {"name", "size", "sha256"}:
            raise ManifestError("malformed file entry")
        name, size, sha = entry["name"], entry["size"], entry["sha256"]
        if type(name) is not str or name == keys.MANIFEST:
            raise ManifestError(f"bad file name {name!r}")
        try:
            keys.checkpoint_file(0, 0, version, name)
        except ValueError as exc:
            raise ManifestError(str(exc)) from None
        if type(size) is not int or size < 0 or type(sha) is not str or not _SHA256.match(sha):
            raise ManifestError(f"file {name!r}: bad size or sha256")
        files.append(FileEntry(name, size, sha))
    names = {f.name for f in files}
    if len(names) != len(files):
        raise ManifestError("a file is listed twice")
    sections = {}
    for sname, sec in _field(body, "sections", dict).items():
        if not _SECTION.match(sname) or type(sec) is not dict or set(sec) != {"tree", "shards"}:
            raise ManifestError(f"malformed section {sname!r}")
        shards = sec["shards"]
        if (
            type(shards) is not list
            or sec["tree"] not in names
            or not all(type(s) is str and s in names for s in shards)
        ):
            raise ManifestError(f"section {sname!r} names files the manifest does not list")
        sections[sname] = Section(sec["tree"], shards)
    extra = _field(body, "extra", dict)
    return Manifest(
        version=version,
        window=_field(body, "window", int),
        uid=_field(body, "uid", int),
        global_step=_field(body, "global_step", int),
        hotkey=hotkey,
        created_at=created_at,
        sections=sections,
        files=files,
        extra=extra,
    )


def pointer_json(manifest: Manifest, manifest_sha256: str) -> bytes:
    body = {
        "schema": SCHEMA + ".latest",
        "window": manifest.window,
        "uid": manifest.uid,
        "global_step": manifest.global_step,
        "manifest": keys.checkpoint_manifest(manifest.window, manifest.uid, manifest.version),
        "manifest_sha256": manifest_sha256,
    }
    return json.dumps(body, indent=1).encode()


def parse_pointer(data: bytes) -> tuple[int, int]:
    """(window, uid) of a latest pointer."""
    try:
        body = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"pointer is not JSON: {exc}") from None
    if type(body) is not dict or body.get("schema") != SCHEMA + ".latest":
        raise ManifestError("not a checkpoint pointer")
    return _field(body, "window", int), _field(body, "uid", int)
