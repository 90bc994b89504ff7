"""Every Chain adapter behind one `ChainCase`, so the chain contract suite runs on each.

The `Chain` port has no words for what a subnet owner or the chain itself does (registering
hotkeys, stakes, permits, a hostile neuron's raw commitment, reading the weights a validator
set); each case brings a `NetworkAdmin` for that. To add an adapter: write an async context
manager yielding a `ChainCase` and list it in `CHAIN_FACTORIES`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import attrs

from adapters.chain.bittensor import BittensorChain
from adapters.chain.fake import FakeNetwork, FileChain
from adapters.clock import FakeClock
from ports import Bucket, Chain

BLOCK_TIME = 12.0


class NetworkAdmin(Protocol):
    def register(
        self,
        hotkey: str,
        *,
        stake: float = 0.0,
        incentive: float = 0.0,
        validator_permit: bool = False,
    ) -> int: ...

    def set_stake(self, hotkey: str, stake: float) -> None: ...

    def set_incentive(self, hotkey: str, incentive: float) -> None: ...

    def set_validator_permit(self, hotkey: str, permit: bool) -> None: ...

    def write_raw_commitment(self, hotkey: str, text: str) -> None: ...

    def weights(self, hotkey: str) -> dict[int, float]: ...


@attrs.define
class ChainCase:
    admin: NetworkAdmin
    clock: FakeClock
    # A hotkey id for a name (a plain string on the fakes, an ss58 address on Bittensor).
    new_hotkey: Callable[[str], str]
    # The Chain of the neuron signing as a hotkey.
    open_chain: Callable[[str], Chain]
    block_time: float = BLOCK_TIME
    # Blocks the finalised block (`current_block`) trails the head by.
    finality_lag: int = 0

    def advance_blocks(self, blocks: float) -> None:
        self.clock.advance(blocks * self.block_time)


def make_bucket(seed: int = 0) -> Bucket:
    """A bucket that fits Templar's commitment format (32 + 32 + 64 characters)."""
    account = f"{seed:032x}"
    return Bucket(
        name=account,
        account_id=account,
        access_key_id=f"AK{seed:030d}",
        secret_access_key=f"secret-{seed:057d}",
    )


@contextlib.asynccontextmanager
async def memory_case(tmp_path: Path) -> AsyncIterator[ChainCase]:
    clock = FakeClock()
    # The in-memory case trails the head, as Bittensor's finalised blocks do.
    network = FakeNetwork.in_memory(clock, block_time=BLOCK_TIME, finality_lag=2)
    yield ChainCase(
        admin=network,
        clock=clock,
        new_hotkey=lambda name: f"hk-{name}",
        open_chain=network.chain,
        finality_lag=2,
    )


@contextlib.asynccontextmanager
async def file_case(tmp_path: Path) -> AsyncIterator[ChainCase]:
    clock = FakeClock()
    path = tmp_path / "chain.json"
    network = FakeNetwork.at_path(path, clock, block_time=BLOCK_TIME)
    yield ChainCase(
        admin=network,
        clock=clock,
        new_hotkey=lambda name: f"hk-{name}",
        # A separate FileChain per neuron, sharing only the file, as localnet processes do.
        open_chain=lambda hotkey: FileChain(path, hotkey, clock=clock, block_time=BLOCK_TIME),
    )


@contextlib.asynccontextmanager
async def bittensor_case(tmp_path: Path) -> AsyncIterator[ChainCase]:
    from tests.support.fake_substrate import FINALITY_LAG, FakeSubtensor

    clock = FakeClock()
    node = FakeSubtensor(clock, block_time=BLOCK_TIME)
    opened: list[BittensorChain] = []

    def open_chain(hotkey: str) -> Chain:
        chain = BittensorChain(
            netuid=node.netuid,
            wallet=node.wallet(hotkey),
            network="local",
            substrate_factory=node.substrate,
            clock=clock,
        )
        opened.append(chain)
        return chain

    yield ChainCase(
        admin=node,
        clock=clock,
        new_hotkey=node.new_hotkey,
        open_chain=open_chain,
        finality_lag=FINALITY_LAG,
    )
    for chain in opened:
        await chain.close()


CHAIN_FACTORIES: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[ChainCase]]] = {
    "memory": memory_case,
    "file": file_case,
    "bittensor-fake-substrate": bittensor_case,
}
