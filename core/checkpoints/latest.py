"""The checkpoint a joiner adopts, across the local store and the validators' buckets.

Any validator, whatever its stake, writes what it likes into its own bucket, so the window
number is a claim, not a rank. Sources are tried in the order given (the local store when
configured, then validators by stake, highest first: the network's agreed state is what
its high-stake validators publish); within a source, its newest checkpoints first. A
checkpoint whose window is ahead of the chain's current window is no candidate at all,
and each source has at most `max_per_source` tries: a hostile validator wastes only its
own few, never an honest one's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence

import attrs
import torch

from core.checkpoints.load import (
    Candidate,
    Expected,
    HeaderCheck,
    Loaded,
    NoCheckpoint,
    Skipped,
    complete_manifests,
    failure_reason,
    list_candidates,
    load_candidates,
)
from core.checkpoints.manifest import Manifest
from core.checkpoints.settings import CheckpointSettings
from ports import Bucket, Metagraph, ObjectStore, StoreOpener

log = logging.getLogger(__name__)

__all__ = ["Choice", "Latest", "Source", "choose", "get_latest", "load_latest", "validator_sources"]


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
        if bucket is None:
            continue
        label = f"validator uid {uid} ({bucket.name})"
        try:
            sources.append(Source(label, opener.open(bucket)))
        except Exception as exc:  # a commitment the opener refuses costs only its source
            # The type only: an opener's message may quote the commitment's credentials.
            log.warning("%s: cannot open its bucket (%s)", label, type(exc).__name__)
    return sources


@attrs.frozen
class Choice:
    """Per source, in source order: the candidates to try, newest first."""

    per_source: tuple[tuple[Candidate, ...], ...]
    skipped: tuple[Skipped, ...]

    def candidates(self) -> list[Candidate]:
        return [c for tries in self.per_source for c in tries]


async def _list(source: Source, settings: CheckpointSettings) -> list[Candidate] | Skipped:
    try:
        return await list_candidates(
            source.store,
            settings.version,
            source=source.label,
            max_objects=settings.max_listed_objects,
        )
    except Exception as exc:  # a hostile listing skips its source, never the search
        skipped = Skipped(source.label, None, None, f"cannot list: {failure_reason(exc)}")
        log.warning("%s", skipped)
        return skipped


async def choose(
    sources: Sequence[Source], settings: CheckpointSettings, *, current_window: int
) -> Choice:
    """What a load may try, in order (see the module doc); every source listed at once."""
    listings = await asyncio.gather(*(_list(s, settings) for s in sources))
    per_source, skipped = [], []
    for source, listing in zip(sources, listings, strict=True):
        if isinstance(listing, Skipped):
            skipped.append(listing)
            continue
        ahead = [c for c in listing if c.window > current_window]
        if ahead:
            # One line per source, however many it planted.
            skipped.append(
                Skipped(
                    source.label,
                    None,
                    None,
                    f"{len(ahead)} checkpoint(s) ahead of the chain's current window "
                    f"{current_window} (the newest: window {ahead[0].window}), never candidates",
                )
            )
            log.warning("%s", skipped[-1])
        usable = [c for c in listing if c.window <= current_window]
        per_source.append(tuple(usable[: settings.max_per_source]))
    return Choice(tuple(per_source), tuple(skipped))


async def get_latest(
    sources: Sequence[Source], settings: CheckpointSettings, *, current_window: int
) -> Latest | None:
    """The checkpoint a load would try first that has a sound manifest and all its files
    (hashes are checked only by a load)."""
    choice = await choose(sources, settings, current_window=current_window)
    for tries in choice.per_source:
        found = await complete_manifests(tries, settings, limit=1)
        if found:
            return Latest(*found[0])
    return None


async def load_latest(
    sources: Sequence[Source],
    settings: CheckpointSettings,
    *,
    current_window: int,
    device: torch.device | str = "cpu",
    use: Callable[[Loaded], object] | None = None,
    expect_model: Expected | None = None,
    sections: Collection[str] | None = None,
    expect_headers: Mapping[str, HeaderCheck] | None = None,
) -> Loaded:
    """Load (and, with `use`, apply) the first candidate that verifies, in the order of the
    module doc. `current_window` is the chain's: nothing newer is ever adopted.
    `expect_model` (`fit.expected_layout`) refuses another model's checkpoint from its shard
    headers, before its tensors download, `expect_headers` other sections; `sections` loads
    only those (see load_candidates).

    Raises `NoCheckpoint` with every skipped candidate and its reason when none does.
    """
    choice = await choose(sources, settings, current_window=current_window)
    candidates = choice.candidates()
    if not candidates:
        raise NoCheckpoint(f"no checkpoint in {len(sources)} sources", choice.skipped)
    return await load_candidates(
        candidates,
        settings,
        device=device,
        skipped=choice.skipped,
        use=use,
        tries=len(candidates),
        expect_model=expect_model,
        sections=sections,
        expect_headers=expect_headers,
    )
