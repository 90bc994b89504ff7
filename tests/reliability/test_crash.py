"""kill -9 of a writer mid-put and mid-checkpoint: the previous data survives whole, no temp
file shows as an object, and the next write (the next run) completes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adapters.clock import SystemClock
from adapters.scratch import TempScratch
from adapters.storage.local import LocalStore
from core.checkpoints import Checkpointer, CheckpointMeta, CheckpointState, load_checkpoint
from tests.reliability.crash_worker import CHECKPOINT, model_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SIZE = 16 << 20


class Worker:
    """The crash worker in its own process; `wait_for` reads its progress lines."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.crash_worker", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for(self, line: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            assert time.monotonic() < deadline, f"worker never printed {line!r}: {self.lines}"
            got = self.proc.stdout.readline()
            assert got, f"worker exited ({self.proc.poll()}) before {line!r}"
            self.lines.append(got.strip())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        assert self.proc.returncode == -signal.SIGKILL


def _wait_for_temp(directory: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(directory.glob(".part-*")):
        assert time.monotonic() < deadline, "no write in flight"
        time.sleep(0.001)


@pytest.mark.parametrize("when", ["between", "in_temp_write", "late"])
async def test_kill_mid_put_keeps_the_previous_object_whole(tmp_path: Path, when: str) -> None:
    root = tmp_path / "bucket"
    worker = Worker("put", str(root), str(SIZE))
    worker.wait_for("put 3")  # two whole objects were published; the third is in flight
    if when == "in_temp_write":
        _wait_for_temp(root / ".tmp")
    elif when == "late":
        await asyncio.sleep(0.05)
    worker.kill()

    store = LocalStore(root)
    blob = await store.get("big")
    assert blob.meta.size == len(blob.data) == SIZE
    assert blob.data == bytes([blob.data[0]]) * SIZE  # one whole round, never a torn mix
    assert blob.data[0] >= 2  # at least the second round's object is there
    assert [m.key async for m in store.list()] == ["big"]  # a leftover temp is no object

    await store.put("big", b"after the crash")
    assert (await store.get("big")).data == b"after the crash"
    assert [m.key async for m in store.list()] == ["big"]


async def test_kill_mid_checkpoint_save_then_restart(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    worker = Worker("checkpoint", str(root), "1")
    worker.wait_for("save 3")  # windows 1 and 2 are complete; 3 is being written
    await asyncio.sleep(0.02)
    worker.kill()
    done = [int(line.split()[1]) for line in worker.lines if line.startswith("saved")]

    store = LocalStore(root)
    scratch = TempScratch(tmp_path / "scratch")
    loaded = await load_checkpoint(store, CHECKPOINT)
    assert max(done) <= loaded.window <= max(done) + 1
    want = model_for(loaded.window)
    assert set(loaded.state.model) == set(want)
    assert all(torch.equal(loaded.state.model[n], t) for n, t in want.items())

    # The next run saves over whatever the crash left and loads its own checkpoint.
    nxt = loaded.window + 1
    saver = Checkpointer(store, scratch, SystemClock(), CHECKPOINT)
    await saver.save(
        CheckpointState(model=model_for(nxt)), CheckpointMeta(window=nxt, global_step=nxt, uid=1)
    )
    again = await load_checkpoint(store, CHECKPOINT)
    assert again.window == nxt and not again.fell_back
    assert all(torch.equal(again.state.model[n], t) for n, t in model_for(nxt).items())
    scratch.close()
