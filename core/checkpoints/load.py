"""Finding and loading checkpoints: verify everything, fall back to older ones, never unpickle.

A candidate is tried in full: manifest (bounded, strictly parsed), every listed file present
with its size, sizes within the configured bounds (checked before any download), each file's
sha256, each shard's safetensors header, and the JSON trees that tie tensors to the state
structure. Any defect skips the candidate with a reason and the next older one is tried;
so does any other exception while reading it, or while the caller's `use` applies it: a
checkpoint is untrusted input, and no way it can fail may stop the search.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, BinaryIO

import attrs
import torch

from core import keys
from core.checkpoints.manifest import Manifest, ManifestError
from core.checkpoints.settings import CheckpointSettings
from core.checkpoints.shards import Layout, ShardError, read_shard
from core.checkpoints.state import CheckpointState
from core.checkpoints.tree import TreeError, join
from ports import ObjectMeta, ObjectStore, StorageError

log = logging.getLogger(__name__)

__all__ = [
    "Candidate",
    "Expected",
    "HeaderCheck",
    "ListingTooLarge",
    "Loaded",
    "NoCheckpoint",
    "Skipped",
    "VersionRefused",
    "complete_manifests",
    "list_candidates",
    "load_candidates",
    "load_checkpoint",
]


class VersionRefused(ValueError):
    """A checkpoint of another protocol version was asked for without allow_other_version."""


class _Corrupt(Exception):
    pass


class ListingTooLarge(LookupError):
    """A bucket holds more checkpoint objects than `max_listed_objects`."""


# The model a loader will apply a state to: {state key: (shape, dtype)}.
Expected = Mapping[str, tuple[tuple[int, ...], torch.dtype]]
# Per section, a fresh check of each shard header of one candidate (raises ShardError).
HeaderCheck = Callable[[], Callable[[Layout], None]]

# A reason quotes an exception raised on hostile input; keep one attacker from filling logs.
_MAX_REASON = 300


def failure_reason(exc: BaseException) -> str:
    """`exc` as a skip reason: its type when unexpected, bounded in length."""
    known = isinstance(exc, _Corrupt | StorageError | ListingTooLarge)
    text = str(exc) if known else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


@attrs.frozen
class Candidate:
    """A checkpoint directory seen in a listing: where, which window and uid, its files."""

    source: str
    store: ObjectStore = attrs.field(repr=False, eq=False)
    version: str
    window: int
    uid: int
    files: dict[str, int] = attrs.field(repr=False, eq=False)  # name -> size from the listing


@attrs.frozen
class Skipped:
    """A candidate passed over; window and uid are None when a whole source was."""

    source: str
    window: int | None
    uid: int | None
    reason: str

    def __str__(self) -> str:
        if self.window is None:
            return f"{self.source}: {self.reason}"
        return f"{self.source}: window {self.window} (uid {self.uid}): {self.reason}"


@attrs.frozen
class Loaded:
    source: str
    manifest: Manifest
    state: CheckpointState
    skipped: tuple[Skipped, ...] = ()
    requested_window: int | None = None

    @property
    def window(self) -> int:
        return self.manifest.window

    @property
    def global_step(self) -> int:
        return self.manifest.global_step

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped)

    def describe(self) -> str:
        text = (
            f"loaded checkpoint window {self.window} (uid {self.manifest.uid}) from {self.source}"
        )
        if self.skipped:
            text += "; fell back past " + "; ".join(str(s) for s in self.skipped)
        return text


class NoCheckpoint(LookupError):
    """No candidate could be loaded; `skipped` says why each was refused."""

    def __init__(self, message: str, skipped: Sequence[Skipped] = ()) -> None:
        reasons = "; ".join(str(s) for s in skipped)
        super().__init__(message + (f" ({reasons})" if reasons else ""))
        self.skipped = tuple(skipped)


async def list_candidates(
    store: ObjectStore,
    version: str,
    *,
    source: str = "",
    uid: int | None = None,
    max_objects: int | None = None,
) -> list[Candidate]:
    """Checkpoint directories with a manifest under `version`, newest window first.

    Raises `ListingTooLarge` past `max_objects` objects: a bucket stuffed with keys would
    otherwise cost time and memory in proportion to a number its owner chose.
    """
    dirs: dict[tuple[int, int], dict[str, int]] = {}
    meta: ObjectMeta
    seen = 0
    async for meta in store.list(keys.checkpoint_prefix(version)):
        seen += 1
        if max_objects is not None and seen > max_objects:
            raise ListingTooLarge(f"more than {max_objects} checkpoint objects")
        parsed = keys.parse(meta.key)
        if parsed is None or parsed.kind is not keys.KeyKind.CHECKPOINT:
            continue
        if parsed.version != version or (uid is not None and parsed.uid != uid):
            continue
        dirs.setdefault((parsed.window, parsed.uid), {})[parsed.file] = meta.size
    found = [
        Candidate(source or store.name, store, version, w, u, files)
        for (w, u), files in dirs.items()
        if keys.MANIFEST in files
    ]
    found.sort(key=lambda c: (-c.window, c.uid))
    return found


async def _manifest(c: Candidate, settings: CheckpointSettings) -> Manifest:
    size = c.files[keys.MANIFEST]
    if size > settings.max_manifest_bytes:
        raise _Corrupt(f"manifest is {size} bytes, over {settings.max_manifest_bytes}")
    blob = await c.store.get(
        keys.checkpoint_manifest(c.window, c.uid, c.version), max_bytes=settings.max_manifest_bytes
    )
    try:
        manifest = Manifest.from_json(blob.data)
    except ManifestError as exc:
        raise _Corrupt(f"bad manifest: {exc}") from None
    if (manifest.version, manifest.window, manifest.uid) != (c.version, c.window, c.uid):
        raise _Corrupt("manifest names another version, window or uid than its key")
    if manifest.total_bytes > settings.max_checkpoint_bytes:
        raise _Corrupt(f"{manifest.total_bytes} bytes, over {settings.max_checkpoint_bytes}")
    for entry in manifest.files:
        listed = c.files.get(entry.name)
        if listed is None:
            raise _Corrupt(f"missing file {entry.name}")
        if listed != entry.size:
            raise _Corrupt(f"{entry.name} is {listed} bytes, the manifest says {entry.size}")
    for name, section in manifest.sections.items():
        if manifest.file(section.tree).size > settings.max_tree_bytes:
            raise _Corrupt(f"{name} tree over {settings.max_tree_bytes} bytes")
    return manifest


async def complete_manifests(
    candidates: Sequence[Candidate], settings: CheckpointSettings, limit: int = 1
) -> list[tuple[Candidate, Manifest]]:
    """Up to `limit` candidates, newest first, whose manifest is sound and whose files are all
    present with the right sizes (hashes are checked only by a load)."""
    out = []
    for c in candidates:
        if len(out) >= limit:
            break
        try:
            out.append((c, await _manifest(c, settings)))
        except (_Corrupt, StorageError) as exc:
            log.info("checkpoint %s/%d-%d incomplete: %s", c.source, c.window, c.uid, exc)
    return out


async def _tree(c: Candidate, manifest: Manifest, name: str) -> Any:
    entry = manifest.file(name)
    blob = await c.store.get(manifest.key(name), max_bytes=entry.size)
    if hashlib.sha256(blob.data).hexdigest() != entry.sha256:
        raise _Corrupt(f"sha256 mismatch in {name}")
    try:
        return json.loads(blob.data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Corrupt(f"{name} is not JSON: {exc}") from None


async def _shard(
    c: Candidate,
    manifest: Manifest,
    name: str,
    settings: CheckpointSettings,
    device: torch.device | str,
    gate: asyncio.Semaphore,
    check: Callable[[Layout], None] | None = None,
) -> dict[str, torch.Tensor]:
    entry = manifest.file(name)

    def parse(fh: BinaryIO) -> tuple[dict[str, torch.Tensor], str]:
        tensors, _meta, sha = read_shard(
            fh,
            size=entry.size,
            max_header_bytes=settings.max_header_bytes,
            device=device,
            check=check,
        )
        return tensors, sha

    # Parsed as it streams in: no scratch copy, one pass that reads, hashes and fills the
    # tensors. Nothing is used before the hash matches the manifest.
    async with gate:
        try:
            tensors, sha = await c.store.get_stream(manifest.key(name), parse, max_bytes=entry.size)
        except ShardError as exc:
            raise _Corrupt(f"{name}: {exc}") from None
    if sha != entry.sha256:
        raise _Corrupt(f"sha256 mismatch in {name}")
    return tensors


def _fits(expected: Expected, section: str) -> Callable[[Layout], None]:
    """A shard header check: every tensor is one of the model's, with its shape and dtype.

    The saver names a section's tensors `{section}/{state key}` (tree.split); checking the
    header refuses another model's checkpoint before a byte of its tensors is read. Each
    tensor may appear once across the section's shards, so what a load allocates for the
    section is at most the model's own size.
    """
    prefix = f"{section}/"
    seen: set[str] = set()
    lock = threading.Lock()  # shards are parsed on the store's threads

    def check(layout: Layout) -> None:
        for name, dtype, shape in layout:
            want = expected.get(name[len(prefix) :]) if name.startswith(prefix) else None
            if want is None:
                raise ShardError(f"tensor {name!r} is not in the model")
            if (shape, dtype) != (tuple(want[0]), want[1]):
                raise ShardError(
                    f"tensor {name!r} is {dtype} {list(shape)}, "
                    f"the model's {want[1]} {list(want[0])}"
                )
        with lock:
            names = {name for name, _, _ in layout}
            if names & seen:
                raise ShardError(f"tensor {min(names & seen)!r} appears in two shards")
            seen.update(names)

    return check


async def _load_one(
    c: Candidate,
    settings: CheckpointSettings,
    device: torch.device | str,
    expect_model: Expected | None = None,
    only: Collection[str] | None = None,
    expect_headers: Mapping[str, HeaderCheck] | None = None,
) -> tuple[Manifest, CheckpointState]:
    manifest = await _manifest(c, settings)
    gate = asyncio.Semaphore(settings.download_concurrency)
    sections = {}
    for name, section in manifest.sections.items():
        if only is not None and name not in only:
            continue  # listed and sized by the manifest check, never downloaded
        tree = await _tree(c, manifest, section.tree)
        check = None
        if expect_model is not None and name == "model":
            check = _fits(expect_model, name)
        elif expect_headers is not None and name in expect_headers:
            check = expect_headers[name]()
        tasks = [
            asyncio.create_task(_shard(c, manifest, s, settings, device, gate, check))
            for s in section.shards
        ]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        tensors: dict[str, torch.Tensor] = {}
        for part in parts:
            if tensors.keys() & part.keys():
                raise _Corrupt(f"section {name}: a tensor appears in two shards")
            tensors.update(part)
        try:
            sections[name] = join(tree, tensors)
        except TreeError as exc:
            raise _Corrupt(f"section {name}: {exc}") from None
    if "model" not in sections:
        raise _Corrupt("no model section")
    return manifest, CheckpointState.from_sections(sections)


async def load_candidates(
    candidates: Sequence[Candidate],
    settings: CheckpointSettings,
    *,
    device: torch.device | str = "cpu",
    requested_window: int | None = None,
    skipped: Sequence[Skipped] = (),
    use: Callable[[Loaded], object] | None = None,
    tries: int | None = None,
    expect_model: Expected | None = None,
    sections: Collection[str] | None = None,
    expect_headers: Mapping[str, HeaderCheck] | None = None,
) -> Loaded:
    """The first of `candidates` (in the given order, at most `tries` of them: by default
    `max_fallbacks + 1`) that loads, verifies and, when given, is accepted by `use`.

    `use` applies the state (e.g. to a model) and raises when it cannot; that candidate is
    then skipped like a corrupt one, so `use` must leave things as they were when it raises.
    `expect_model` refuses a model section of other shapes or dtypes from its shard headers,
    before its tensors are downloaded; `expect_headers` does the same for other sections
    (`optim_fit.optimizer_headers`, `scheduler_headers`). `sections` (e.g. `("model",)`)
    loads only those: a joiner downloads nothing else a hostile manifest lists.
    """
    skipped = list(skipped)
    limit = settings.max_fallbacks + 1 if tries is None else tries
    for c in candidates[:limit]:
        try:
            manifest, state = await _load_one(
                c, settings, device, expect_model, sections, expect_headers
            )
            loaded = Loaded(c.source, manifest, state, tuple(skipped), requested_window)
        except Exception as exc:
            _skip(skipped, c, failure_reason(exc))
            continue
        if use is not None:
            try:
                use(loaded)
            except Exception as exc:
                _skip(skipped, c, f"not applied: {failure_reason(exc)}")
                continue
        log.log(logging.WARNING if skipped else logging.INFO, "%s", loaded.describe())
        return loaded
    raise NoCheckpoint("no loadable checkpoint", skipped)


def _skip(skipped: list[Skipped], c: Candidate, reason: str) -> None:
    skipped.append(Skipped(c.source, c.window, c.uid, reason))
    log.warning("checkpoint %s unusable, falling back", skipped[-1])


async def load_checkpoint(
    store: ObjectStore,
    settings: CheckpointSettings,
    *,
    window: int | None = None,
    uid: int | None = None,
    device: torch.device | str = "cpu",
    version: str | None = None,
    allow_other_version: bool = False,
) -> Loaded:
    """Load the checkpoint of `window` (None: the newest) from `store`, falling back to the
    newest older complete one when it is missing or corrupt (`Loaded.skipped` says why).

    Raises `NoCheckpoint` when nothing loads, `VersionRefused` for another protocol version
    unless `allow_other_version`.
    """
    version = version or settings.version
    if version != settings.version and not allow_other_version:
        raise VersionRefused(
            f"checkpoint version {version!r} differs from ours ({settings.version!r}); "
            "pass allow_other_version=True to load it anyway"
        )
    candidates = await list_candidates(
        store, version, uid=uid, max_objects=settings.max_listed_objects
    )
    skipped: list[Skipped] = []
    if window is not None:
        if not any(c.window == window for c in candidates):
            skipped.append(Skipped(store.name, window, uid, "no manifest for this window"))
        candidates = [c for c in candidates if c.window <= window]
    return await load_candidates(
        candidates, settings, device=device, requested_window=window, skipped=skipped
    )
