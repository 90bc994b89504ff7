"""Fake chains: a whole subnet in memory (`FakeChain`) or in one shared file (`FileChain`).

`FakeNetwork` is the subnet itself and the "network admin" the `Chain` port has no words for:
registering hotkeys, stakes, incentives, validator permits, raw commitments, reading the
weights a validator set. Each `FakeChain` is one neuron on it, signing as its hotkey.

Blocks come from the injected clock: block = genesis_block + floor((now - genesis_time) /
block_time). The file-backed network keeps genesis and block time in the file, so every
process sharing it agrees on block numbers (given clocks that agree on the time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from adapters.chain.commitment import MalformedCommitment, encode_bucket, parse_commitment
from adapters.chain.ledger import FileLedger, Ledger, MemoryLedger, State, new_state
from adapters.chain.weights import normalised_weights
from ports import Bucket, ChainError, Clock, Metagraph

log = logging.getLogger(__name__)
T = TypeVar("T")


def _uid_of(state: State, hotkey: str) -> int | None:
    for uid, neuron in enumerate(state["neurons"]):
        if neuron["hotkey"] == hotkey:
            return uid
    return None


def _registered(state: State, hotkey: str) -> int:
    uid = _uid_of(state, hotkey)
    if uid is None:
        raise ChainError(f"hotkey {hotkey} is not registered on this subnet")
    return uid


def stored_block_time(path: str | os.PathLike[str]) -> float | None:
    """The block time kept in the chain file at `path`, or None when there is no file yet.

    Reads without the lock and creates nothing (not even the lock file): a neuron checks its
    settings against the file before anything of its own exists. Writes replace the file
    whole (adapters/chain/ledger.py), so an unlocked read never sees half of one.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return float(json.load(handle)["block_time"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{os.fspath(path)} is not a fake chain file: {exc}") from None


class FakeNetwork:
    """A fake subnet; `chain(hotkey)` gives a neuron's view of it."""

    def __init__(self, ledger: Ledger, clock: Clock, *, finality_lag: int = 0) -> None:
        if finality_lag < 0:
            raise ValueError(f"finality_lag must be >= 0, got {finality_lag}")
        self._ledger = ledger
        self.clock = clock
        # Blocks the finalised block trails the head by, as seen by this node (Bittensor: 2-3).
        self.finality_lag = finality_lag
        params = ledger.read()
        self.genesis_block: int = params["genesis_block"]
        self.genesis_time = datetime.fromisoformat(params["genesis_time"])
        self.block_time: float = params["block_time"]

    @classmethod
    def in_memory(
        cls,
        clock: Clock,
        *,
        block_time: float = 12.0,
        genesis_block: int = 0,
        genesis_time: datetime | None = None,
        finality_lag: int = 0,
    ) -> FakeNetwork:
        state = new_state(
            genesis_block=genesis_block,
            genesis_time=genesis_time or clock.now(),
            block_time=block_time,
        )
        return cls(MemoryLedger(state), clock, finality_lag=finality_lag)

    @classmethod
    def at_path(
        cls,
        path: str | os.PathLike[str],
        clock: Clock,
        *,
        block_time: float = 12.0,
        genesis_block: int = 0,
        genesis_time: datetime | None = None,
        finality_lag: int = 0,
    ) -> FakeNetwork:
        """The network in the file `path`; the first process to open it sets its genesis."""

        def initial() -> State:
            return new_state(
                genesis_block=genesis_block,
                genesis_time=genesis_time or clock.now(),
                block_time=block_time,
            )

        return cls(FileLedger(path, initial), clock, finality_lag=finality_lag)

    @property
    def blocking(self) -> bool:
        """True when state transactions block (a file lock), so async callers use a thread."""
        return self._ledger.blocking

    def chain(self, hotkey: str) -> FakeChain:
        return FakeChain(self, hotkey)

    # Blocks -----------------------------------------------------------------------------

    def head_block(self) -> int:
        elapsed = (self.clock.now() - self.genesis_time).total_seconds()
        # A clock behind genesis (another process's fake clock) sees the genesis block.
        return self.genesis_block + max(0, math.floor(elapsed / self.block_time))

    def current_block(self) -> int:
        """The newest finalised block."""
        return max(self.genesis_block, self.head_block() - self.finality_lag)

    def block_timestamp(self, block: int) -> datetime:
        if block < 0:
            raise ValueError(f"block {block} is negative")
        if block > self.head_block():
            raise ValueError(f"block {block} is in the future")
        offset = timedelta(seconds=(block - self.genesis_block) * self.block_time)
        return (self.genesis_time + offset).astimezone(UTC)

    # Admin: what the chain or a subnet owner does ----------------------------------------

    def run(self, change: Callable[[State], T]) -> T:
        return self._ledger.update(change)

    def read(self) -> State:
        return self._ledger.read()

    def register(
        self,
        hotkey: str,
        *,
        stake: float = 0.0,
        incentive: float = 0.0,
        validator_permit: bool = False,
    ) -> int:
        """Register `hotkey` (the next free uid) and return its uid; idempotent per hotkey."""
        if not hotkey:
            raise ValueError("hotkey must not be empty")

        def change(state: State) -> int:
            uid = _uid_of(state, hotkey)
            if uid is not None:
                return uid
            state["neurons"].append(
                {
                    "hotkey": hotkey,
                    "stake": float(stake),
                    "incentive": float(incentive),
                    "validator_permit": bool(validator_permit),
                }
            )
            return len(state["neurons"]) - 1

        return self.run(change)

    def _set(self, hotkey: str, field: str, value: object) -> None:
        def change(state: State) -> None:
            state["neurons"][_registered(state, hotkey)][field] = value

        self.run(change)

    def set_stake(self, hotkey: str, stake: float) -> None:
        self._set(hotkey, "stake", float(stake))

    def set_incentive(self, hotkey: str, incentive: float) -> None:
        self._set(hotkey, "incentive", float(incentive))

    def set_validator_permit(self, hotkey: str, permit: bool) -> None:
        self._set(hotkey, "validator_permit", bool(permit))

    def write_raw_commitment(self, hotkey: str, text: str) -> None:
        """Store any string as `hotkey`'s commitment, as a hostile or buggy neuron could."""

        def change(state: State) -> None:
            state["commitments"][hotkey] = text

        self.run(change)

    def weights(self, hotkey: str) -> dict[int, float]:
        """The weights `hotkey` last set, normalised to sum to one ({} if none)."""
        stored = self.read()["weights"].get(hotkey, {})
        return {int(uid): float(w) for uid, w in stored.items()}


class FakeChain:
    """One neuron's `Chain` on a `FakeNetwork`."""

    def __init__(self, network: FakeNetwork, hotkey: str) -> None:
        self.network = network
        self.hotkey = hotkey

    async def _run(self, work: Callable[[], T]) -> T:
        if self.network.blocking:
            return await asyncio.to_thread(work)
        return work()

    async def current_block(self) -> int:
        return self.network.current_block()

    async def head_block(self) -> int:
        return self.network.head_block()

    async def block_timestamp(self, block: int) -> datetime:
        return self.network.block_timestamp(block)

    async def commit_bucket(self, bucket: Bucket) -> bool:
        text = encode_bucket(bucket)

        def change(state: State) -> bool:
            _registered(state, self.hotkey)
            if state["commitments"].get(self.hotkey) == text:
                return False
            state["commitments"][self.hotkey] = text
            return True

        return await self._run(lambda: self.network.run(change))

    async def bucket_commitments(self) -> dict[int, Bucket]:
        state = await self._run(self.network.read)
        buckets: dict[int, Bucket] = {}
        for uid, neuron in enumerate(state["neurons"]):
            text = state["commitments"].get(neuron["hotkey"])
            if text is None:
                continue
            try:
                buckets[uid] = parse_commitment(text)
            except MalformedCommitment as exc:
                log.warning("uid %d: bucket commitment skipped: %s", uid, exc)
        return buckets

    async def metagraph(self) -> Metagraph:
        state = await self._run(self.network.read)
        neurons = state["neurons"]
        return Metagraph(
            block=self.network.current_block(),
            uids=range(len(neurons)),
            hotkeys=[n["hotkey"] for n in neurons],
            stakes=[n["stake"] for n in neurons],
            incentives=[n["incentive"] for n in neurons],
            validator_permits=[n["validator_permit"] for n in neurons],
        )

    async def set_weights(self, uids: Sequence[int], weights: Sequence[float]) -> None:
        normalised = normalised_weights(uids, weights)

        def change(state: State) -> None:
            _registered(state, self.hotkey)
            unknown = sorted(u for u in normalised if not 0 <= u < len(state["neurons"]))
            if unknown:
                raise ChainError(f"weights for uids not in the subnet: {unknown}")
            state["weights"][self.hotkey] = {str(u): w for u, w in normalised.items()}

        await self._run(lambda: self.network.run(change))


class FileChain(FakeChain):
    """A `FakeChain` on the network kept in the file `path` (created on first use)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        hotkey: str,
        *,
        clock: Clock,
        block_time: float = 12.0,
        genesis_block: int = 0,
        genesis_time: datetime | None = None,
        finality_lag: int = 0,
    ) -> None:
        network = FakeNetwork.at_path(
            path,
            clock,
            block_time=block_time,
            genesis_block=genesis_block,
            genesis_time=genesis_time,
            finality_lag=finality_lag,
        )
        super().__init__(network, hotkey)
