"""How far this machine's clock is from the network's, and a clock that makes up for it.

The time a peer's upload is judged by is the store's (its `last_modified`), and the time
window comes from the chain's block timestamps; only the wait for a late peer reads the local
clock. A node whose clock runs ahead would stop waiting before the window has closed for
everyone else, and one that runs behind would wait on for nothing. So the neuron measures its
offset and reads time through a `NetworkClock`.

An offset is an interval, because every reading is coarse: a store's `Date` header has whole
seconds, and a block timestamp only says the chain's time is at least that. A reading taken
between local times `sent` and `received` bounds `local - reference` to
`[sent - (stamp + resolution), received - stamp]`; several readings are intersected. The
correction applied is the smallest the evidence forces (the bound of the interval nearest 0,
or 0 when the interval holds 0), so a well-kept clock is never shifted by a coarse reading.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import attrs

from ports import Chain, ChainError, Clock, ObjectStore, StorageError

log = logging.getLogger(__name__)

__all__ = ["NetworkClock", "Offset", "chain_offset", "estimate", "store_offset"]

WARN_SECONDS = 1.0
"""An offset beyond this is logged as a WARNING: it is as large as a timestamp's resolution."""


@attrs.frozen
class Offset:
    """`local clock - reference clock` lies in [low, high] seconds."""

    low: float
    high: float
    source: str

    def __attrs_post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"offset interval [{self.low}, {self.high}] is empty")

    @classmethod
    def reading(
        cls, sent: datetime, received: datetime, stamp: datetime, resolution: float, source: str
    ) -> Offset:
        """One reading `stamp` (rounded down to `resolution`) taken between `sent` and
        `received` on the local clock."""
        first = (sent - stamp).total_seconds() - resolution
        return cls(low=first, high=max(first, (received - stamp).total_seconds()), source=source)

    @property
    def correction(self) -> float:
        """Seconds to subtract from local time: the least the evidence forces."""
        if self.low <= 0.0 <= self.high:
            return 0.0
        return self.low if self.low > 0 else self.high

    @property
    def width(self) -> float:
        return self.high - self.low

    def narrowed(self, other: Offset) -> Offset:
        """Both readings at once; a later reading that contradicts this one replaces it (the
        reference clock was stepped)."""
        low, high = max(self.low, other.low), min(self.high, other.high)
        if low > high:
            return other
        return Offset(low=low, high=high, source=self.source)


async def store_offset(
    store: ObjectStore, clock: Clock, *, resolution: float = 1.0, samples: int = 3
) -> Offset | None:
    """The offset against `store`'s clock, from `samples` readings spread over a second (their
    sub-second phases narrow the interval); None when the store cannot be reached."""
    found: Offset | None = None
    for i in range(samples):
        if i:
            await clock.sleep(resolution / samples + 0.01)
        sent = clock.now()
        try:
            stamp = await store.server_time()
        except StorageError as exc:
            log.info("no time reading from bucket %r: %s", store.name, exc)
            continue
        reading = Offset.reading(sent, clock.now(), stamp, resolution, f"store {store.name}")
        found = reading if found is None else found.narrowed(reading)
    return found


async def chain_offset(clock: Clock, chain: Chain, *, block_time: float) -> Offset | None:
    """The offset against the chain, from the head block's timestamp: the chain's time is at
    least that, and less than one more block time plus one missed slot."""
    sent = clock.now()
    try:
        head = await chain.head_block()
        stamp = await chain.block_timestamp(head)
    except (ChainError, ValueError) as exc:
        log.info("no time reading from the chain: %s", exc)
        return None
    received = clock.now()
    low = (sent - stamp).total_seconds() - 2 * block_time
    return Offset(low=low, high=max(low, (received - stamp).total_seconds()), source="chain")


def estimate(store: Offset | None, chain: Offset | None) -> Offset | None:
    """The store's reading where there is one (it stamps the uploads that are judged), narrowed
    by the chain's when they agree."""
    if store is None:
        return chain
    if chain is None:
        return store
    low, high = max(store.low, chain.low), min(store.high, chain.high)
    if low > high:
        log.warning(
            "the store's clock and the chain's disagree (local minus store %.1f..%.1f s, "
            "minus chain %.1f..%.1f s): following the store's",
            store.low,
            store.high,
            chain.low,
            chain.high,
        )
        return store
    return Offset(low=low, high=high, source=f"{store.source} and chain")


class NetworkClock:
    """A `Clock` whose `now()` is the local time less the measured offset.

    `monotonic` and `sleep` are the local clock's: durations need no correction.
    """

    def __init__(self, local: Clock, offset: float = 0.0) -> None:
        self.local = local
        self.offset = offset

    def now(self) -> datetime:
        return self.local.now() - timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return self.local.monotonic()

    async def sleep(self, seconds: float) -> None:
        await self.local.sleep(seconds)

    def apply(self, found: Offset | None) -> float:
        """Follow `found` (keep the last correction when nothing could be measured); a WARNING
        when the correction is over a second."""
        if found is None:
            return self.offset
        self.offset = found.correction
        if abs(self.offset) > WARN_SECONDS:
            side = "ahead of" if self.offset > 0 else "behind"
            log.warning(
                "this machine's clock is %.1f s %s the network's (%s: local minus reference in "
                "[%.2f, %.2f] s); deadlines follow the network's time. Fix the clock (NTP).",
                abs(self.offset),
                side,
                found.source,
                found.low,
                found.high,
            )
        return self.offset
