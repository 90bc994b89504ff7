"""A process for the crash tests to SIGKILL: it writes to a local store in a loop.

    python -m tests.reliability.crash_worker put <root> <size>
        puts `size` bytes, all equal to one value that changes every round, at key "big"
    python -m tests.reliability.crash_worker checkpoint <root> <first window>
        saves a checkpoint of `model_for(window)` for window, window + 1, ...

Each round prints a line before it starts, so the parent knows a write is in flight.
"""

from __future__ import annotations

import asyncio
import sys

import torch

from adapters.clock import SystemClock
from adapters.scratch import TempScratch
from adapters.storage.local import LocalStore
from core.checkpoints import Checkpointer, CheckpointMeta, CheckpointSettings, CheckpointState

CHECKPOINT = CheckpointSettings(version="1.0.0", shard_bytes=1 << 20)


def model_for(window: int) -> dict[str, torch.Tensor]:
    """A model whose every value says which window saved it."""
    return {f"layer{i}.weight": torch.full((512, 512), float(window * 10 + i)) for i in range(6)}


async def put_loop(root: str, size: int) -> None:
    store = LocalStore(root)
    value = 1
    while True:
        print(f"put {value}", flush=True)
        await store.put("big", bytes([value]) * size)
        value = value % 250 + 1


async def checkpoint_loop(root: str, window: int) -> None:
    store = LocalStore(root)
    saver = Checkpointer(store, TempScratch(f"{root}-scratch"), SystemClock(), CHECKPOINT)
    while True:
        print(f"save {window}", flush=True)
        meta = CheckpointMeta(window=window, global_step=window, uid=1)
        await saver.save(CheckpointState(model=model_for(window)), meta)
        print(f"saved {window}", flush=True)
        window += 1


if __name__ == "__main__":
    mode, root, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(put_loop(root, number) if mode == "put" else checkpoint_loop(root, number))
