"""Where a fake subnet keeps its state: in memory, or in one JSON file shared by processes.

The state is a small JSON-able dict (see `new_state`); every change is one read-modify-write
transaction, so the file ledger is safe for a validator and several miners that are separate
processes (the localnet): each transaction holds an exclusive `flock` on a sidecar lock file
and replaces the state file atomically, so a reader never sees a half-written state.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
State = dict[str, Any]


def new_state(*, genesis_block: int, genesis_time: datetime, block_time: float) -> State:
    if block_time <= 0:
        raise ValueError("block_time must be positive")
    if genesis_block < 0:
        raise ValueError("genesis_block must not be negative")
    if genesis_time.tzinfo is None:
        raise ValueError("genesis_time must be timezone-aware")
    return {
        "genesis_block": genesis_block,
        "genesis_time": genesis_time.isoformat(),
        "block_time": block_time,
        # Index is the uid, as on chain: uids are dense and assigned in registration order.
        "neurons": [],
        # Keyed by hotkey, as the Commitments pallet does: a commitment outlives a uid.
        "commitments": {},
        "weights": {},
    }


class Ledger(Protocol):
    # True when transactions block (file locks), so async callers move them off the loop.
    blocking: bool

    def read(self) -> State: ...

    def update(self, change: Callable[[State], T]) -> T: ...


class MemoryLedger:
    blocking = False

    def __init__(self, state: State) -> None:
        self._state = state
        self._lock = threading.Lock()

    def read(self) -> State:
        with self._lock:
            return copy.deepcopy(self._state)

    def update(self, change: Callable[[State], T]) -> T:
        with self._lock:
            # Work on a copy so a change that raises half-way leaves the state untouched.
            draft = copy.deepcopy(self._state)
            result = change(draft)
            self._state = draft
            return result


class FileLedger:
    """The state in `path`, created from `initial` by whichever process comes first."""

    blocking = True

    def __init__(self, path: str | os.PathLike[str], initial: Callable[[], State]) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(fcntl.LOCK_EX):
            if not self.path.exists():
                self._write(initial())

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        # flock belongs to the open file description, so a fresh open per transaction also
        # serialises threads of one process, not only processes.
        with open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _load(self) -> State:
        with open(self.path, encoding="utf-8") as handle:
            return json.load(handle)

    def _write(self, state: State) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".chain-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(state, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read(self) -> State:
        with self._locked(fcntl.LOCK_SH):
            return self._load()

    def update(self, change: Callable[[State], T]) -> T:
        with self._locked(fcntl.LOCK_EX):
            state = self._load()
            result = change(state)
            self._write(state)
            return result
