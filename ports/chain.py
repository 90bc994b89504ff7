"""The chain port: what the domain needs from Bittensor, nothing more."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from ports.objects import Bucket


def _same_length(instance: Metagraph, attribute: attrs.Attribute, value: tuple) -> None:
    if len(value) != len(instance.uids):
        raise ValueError(
            f"metagraph {attribute.name} has {len(value)} entries, uids has {len(instance.uids)}"
        )


@attrs.frozen
class Metagraph:
    """A snapshot of the subnet's neurons, index-aligned by position."""

    block: int
    uids: tuple[int, ...] = attrs.field(converter=tuple)
    hotkeys: tuple[str, ...] = attrs.field(converter=tuple, validator=_same_length)
    stakes: tuple[float, ...] = attrs.field(converter=tuple, validator=_same_length)
    incentives: tuple[float, ...] = attrs.field(converter=tuple, validator=_same_length)
    validator_permits: tuple[bool, ...] = attrs.field(converter=tuple, validator=_same_length)

    def __attrs_post_init__(self) -> None:
        if len(set(self.uids)) != len(self.uids):
            raise ValueError("metagraph uids are not unique")

    def hotkey(self, uid: int) -> str | None:
        """The hotkey registered at `uid`, or None if the uid is not in the metagraph."""
        try:
            return self.hotkeys[self.uids.index(uid)]
        except ValueError:
            return None

    def uid(self, hotkey: str) -> int | None:
        """The uid of `hotkey`, or None if it is not registered."""
        try:
            return self.uids[self.hotkeys.index(hotkey)]
        except ValueError:
            return None

    def stake(self, uid: int) -> float:
        """Stake of `uid`; 0.0 for an unknown uid."""
        try:
            return self.stakes[self.uids.index(uid)]
        except ValueError:
            return 0.0

    def validators(self) -> tuple[int, ...]:
        """Uids holding a validator permit, highest stake first (ties by uid)."""
        rows = [
            (-s, u)
            for u, s, p in zip(self.uids, self.stakes, self.validator_permits, strict=True)
            if p
        ]
        return tuple(u for _, u in sorted(rows))


@runtime_checkable
class Chain(Protocol):
    """The subnet as seen by one neuron (its own hotkey signs what it writes).

    Every method raises `ports.errors.ChainError` when the chain cannot be reached after the
    adapter's retries; none raises for a single malformed value read from the chain.
    """

    async def current_block(self) -> int:
        """The newest finalised block number."""
        ...

    async def head_block(self) -> int:
        """The newest block, finalised or not (>= `current_block`); `head_block() -
        current_block()` is the finality lag (docs/chain.md)."""
        ...

    async def block_timestamp(self, block: int) -> datetime:
        """When `block` was produced (tz-aware UTC). Raises `ValueError` for a block past the
        head."""
        ...

    async def commit_bucket(self, bucket: Bucket) -> bool:
        """Commit our read bucket; writes only when it differs from what is on chain.

        Returns True when a new commitment was written, False when it was already current.
        """
        ...

    async def bucket_commitments(self) -> dict[int, Bucket]:
        """Every uid's committed read bucket. Malformed commitments are left out (and logged)."""
        ...

    async def metagraph(self) -> Metagraph:
        """The current metagraph."""
        ...

    async def set_weights(self, uids: Sequence[int], weights: Sequence[float]) -> None:
        """Set our validator weights. Raises `ValueError` if the lengths differ."""
        ...
