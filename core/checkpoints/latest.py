"""The newest complete checkpoint across the local store and the validators' buckets.

Sources are consulted in priority order: the local store (when configured), then validators
by stake, highest first. The newest window wins; between equal windows the earlier source
wins. Loading walks the same order, so a corrupt newest checkpoint falls back to the next
best one, from whichever bucket holds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import attrs
import torch

from core.checkpoints.load import (
    Candidate,
    Loaded,
    NoCheckpoint,
    complete_manifests,
    list_candidates,
    load_candidates,
)
from core.checkpoints.manifest import Manifest
from core.checkpoints.settings import CheckpointSettings
from ports import Bucket, Metagraph, ObjectStore, StorageError, StoreOpener

log = logging.getLogger(__name__)

__all__ = ["Latest", "Source", "get_latest", "load_latest", "validator_sources"]


@attrs.frozen
class Source:
    label: str
    store: ObjectStore = attrs.field(eq=False, repr=False)


@attrs.frozen
class Latest:
    candidate: Candidate
    manifest: Manifest

    @property
    def window(self) -> int:
        return self.manifest.window


def validator_sources(
    metagraph: Metagraph,
    commitments: Mapping[int, Bucket],
    opener: StoreOpener,
    *,
    local: ObjectStore | None = None,
    max_validators: int = 8,
) -> list[Source]:
    """The local store, then the committed buckets of up to `max_validators` validators,
    highest stake first."""
    sources = [Source("local", local)] if local is not None else []
    for uid in metagraph.validators():
        if len(sources) >= max_validators + (local is not None):
            break
        bucket = commitments.get(uid)
        if bucket is not None:
            sources.append(Source(f"validator uid {uid} ({bucket.name})", opener.open(bucket)))
    return sources


async def _ranked(sources: Sequence[Source], version: str) -> list[Candidate]:
    async def one(source: Source) -> list[Candidate]:
        try:
            return await list_candidates(source.store, version, source=source.label)
        except StorageError as exc:
            log.warning("cannot list checkpoints in %s: %s", source.label, exc)
            return []

    listings = await asyncio.gather(*(one(s) for s in sources))
    ranked = [(-c.window, rank, c.uid, c) for rank, cs in enumerate(listings) for c in cs]
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]


async def get_latest(sources: Sequence[Source], settings: CheckpointSettings) -> Latest | None:
    """The newest checkpoint whose manifest is sound and whose files are all present."""
    found = await complete_manifests(await _ranked(sources, settings.version), settings, limit=1)
    return Latest(*found[0]) if found else None


async def load_latest(
    sources: Sequence[Source],
    settings: CheckpointSettings,
    *,
    device: torch.device | str = "cpu",
) -> Loaded:
    """Load the newest checkpoint that verifies, across `sources` (see the module doc)."""
    candidates = await _ranked(sources, settings.version)
    if not candidates:
        raise NoCheckpoint(f"no checkpoint in {len(sources)} sources")
    return await load_candidates(candidates, settings, device=device)
