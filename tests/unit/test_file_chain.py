"""The file-backed fake chain: shared by processes, persistent, agreeing on genesis."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from datetime import timedelta
from pathlib import Path

from adapters.chain.fake import FakeNetwork, FileChain
from adapters.clock import FakeClock, SystemClock
from tests.contract.chain_cases import make_bucket

ROUNDS = 40


def neuron_process(path: str, worker: int, start: multiprocessing.synchronize.Barrier) -> None:
    """One localnet neuron: registers, then commits and registers as fast as it can."""
    clock = SystemClock()
    network = FakeNetwork.at_path(path, clock, block_time=0.5)
    hotkey = f"worker-{worker}"
    network.register(hotkey)
    chain = FileChain(path, hotkey, clock=clock)
    start.wait()

    async def run() -> None:
        for i in range(ROUNDS):
            assert await chain.commit_bucket(make_bucket(worker * 1000 + i)) is True
            network.register(f"extra-{worker}-{i}")
            await chain.bucket_commitments()

    asyncio.run(run())


def test_two_processes_share_one_file_without_losing_writes(tmp_path: Path) -> None:
    path = tmp_path / "localnet" / "chain.json"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [
        context.Process(target=neuron_process, args=(str(path), worker, start)) for worker in (1, 2)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0

    state = json.loads(path.read_text())
    hotkeys = [n["hotkey"] for n in state["neurons"]]
    assert len(hotkeys) == len(set(hotkeys)) == 2 + 2 * ROUNDS
    network = FakeNetwork.at_path(path, SystemClock())
    buckets = asyncio.run(network.chain("reader").bucket_commitments())
    assert buckets == {
        hotkeys.index("worker-1"): make_bucket(1000 + ROUNDS - 1),
        hotkeys.index("worker-2"): make_bucket(2000 + ROUNDS - 1),
    }
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".chain-")]


async def test_state_persists_and_the_first_opener_sets_genesis(tmp_path: Path) -> None:
    path = tmp_path / "chain.json"
    first_clock = FakeClock()
    first = FileChain(path, "alice", clock=first_clock, block_time=6.0)
    first.network.register("alice")
    await first.commit_bucket(make_bucket(1))

    # A later process with another block time and a clock 60 s on still agrees on blocks.
    later_clock = FakeClock(first_clock.now() + timedelta(seconds=60))
    later = FileChain(path, "bob", clock=later_clock, block_time=1.0)
    assert later.network.block_time == 6.0
    assert await later.current_block() == 10
    assert await later.bucket_commitments() == {0: make_bucket(1)}


async def test_a_clock_behind_genesis_sees_the_genesis_block(tmp_path: Path) -> None:
    clock = FakeClock()
    network = FakeNetwork.at_path(
        tmp_path / "chain.json", clock, genesis_block=100, genesis_time=clock.now() + timedelta(1)
    )
    assert await network.chain("alice").current_block() == 100
