"""The janitor: removes stale objects from our own buckets, local and remote.

Rules (docs/checkpoints.md, "Retention"):

- per-window objects and start windows: `core.retention` (a retention per kind, never the
  newest of a kind and version, never our version's start window);
- per protocol version, the newest `keep_checkpoints` complete checkpoints are always kept;
  any other checkpoint directory (complete or not) goes once it is older than
  `current_window - stale_retention`, so a save in progress (always near the current window)
  is never touched;
- only names the profile's key scheme recognises (`core.keys.parse` for ours) are ever
  deleted: the latest pointers and anything another tool wrote stay;
- at most `max_deletes` keys per call, oldest first; a checkpoint's manifest is deleted in an
  earlier request than its files, so a half-deleted checkpoint is never complete.

A pass costs one listing of the bucket (one request per 1,000 objects, and retention keeps
the bucket bounded), the manifest reads of the newest checkpoints, and at most two delete
calls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import attrs

from core import keys
from core.checkpoints.load import Candidate, complete_manifests
from core.checkpoints.settings import CheckpointSettings
from core.keys import KeyKind, ParsedKey
from core.retention import RetentionPolicy, stale
from ports import ObjectStore

log = logging.getLogger(__name__)

__all__ = ["RetentionPolicy", "Sweep", "sweep", "sweep_all"]


@attrs.frozen
class Sweep:
    store: str
    deleted: tuple[str, ...]
    kept_checkpoints: tuple[tuple[str, int, int], ...]  # (version, window, uid)
    more: bool  # stopped at max_deletes: call again

    @property
    def count(self) -> int:
        return len(self.deleted)


async def sweep(
    store: ObjectStore,
    current_window: int,
    policy: RetentionPolicy,
    *,
    settings: CheckpointSettings | None = None,
    scheme: keys.KeyScheme = keys.NATIVE,
) -> Sweep:
    """Delete what `policy` says is stale from `store` (at most `policy.max_deletes` keys);
    only names `scheme` writes are candidates."""
    cutoff = current_window - policy.stale_retention
    named: list[tuple[str, ParsedKey]] = []
    dirs: dict[tuple[str, int, int], dict[str, int]] = {}
    async for meta in store.list(""):
        parsed = scheme.parse(meta.key)
        if parsed is None:
            continue
        named.append((meta.key, parsed))
        if parsed.kind is KeyKind.CHECKPOINT:
            dirs.setdefault((parsed.version, parsed.window, parsed.uid), {})[parsed.file] = (
                meta.size
            )
    old = stale(named, current_window, policy)

    kept: set[tuple[str, int, int]] = set()
    for version in sorted({v for v, _, _ in dirs}):
        candidates = [
            Candidate(store.name, store, v, w, u, files)
            for (v, w, u), files in dirs.items()
            if v == version and keys.MANIFEST in files
        ]
        candidates.sort(key=lambda c: (-c.window, c.uid))
        bounds = settings or CheckpointSettings(version=version)
        complete = await complete_manifests(candidates, bounds, limit=policy.keep_checkpoints)
        kept.update((c.version, c.window, c.uid) for c, _ in complete)

    doomed_dirs = sorted((w, v, u) for (v, w, u) in dirs if (v, w, u) not in kept and w < cutoff)
    manifests, files = [], []
    budget = policy.max_deletes
    plan = sorted(
        [(w, 0, key) for w, key in old]
        + [(w, 1, (v, w, u)) for w, v, u in doomed_dirs],
        key=lambda item: (item[0], item[1]),
    )  # fmt: skip
    more = False
    for _window, what, item in plan:
        if budget <= 0:
            more = True
            break
        if what == 0:
            files.append(item)
            budget -= 1
            continue
        v, w, u = item
        names = sorted(dirs[(v, w, u)], key=lambda n: n != keys.MANIFEST)
        for name in names[:budget]:
            key = keys.checkpoint_file(w, u, v, name)
            (manifests if name == keys.MANIFEST else files).append(key)
        more = more or len(names) > budget
        budget -= min(budget, len(names))
    if manifests:
        await store.delete(manifests)
    if files:
        await store.delete(files)
    deleted = tuple(manifests + files)
    if deleted:
        # DEBUG: a neuron's per-window INFO line carries the count (`cleaned`).
        log.debug("janitor: deleted %d stale objects from %s", len(deleted), store.name)
    return Sweep(store.name, deleted, tuple(sorted(kept)), more)


async def sweep_all(
    stores: Sequence[ObjectStore] | Iterable[ObjectStore],
    current_window: int,
    policy: RetentionPolicy,
    *,
    settings: CheckpointSettings | None = None,
    scheme: keys.KeyScheme = keys.NATIVE,
) -> list[Sweep]:
    """`sweep` each of our stores (the local one and our remote bucket)."""
    return [
        await sweep(s, current_window, policy, settings=settings, scheme=scheme) for s in stores
    ]
