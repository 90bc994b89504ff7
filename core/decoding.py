"""Where peers' payloads are decoded: one runner, chosen once and handed to gather or stream.

- `Inline`: on the event loop, back to back for at most a time slice, then the loop gets a
  pass for its timers and I/O. For short compiled decodes, which cost less than the trips
  between threads they would save (docs/gather.md).
- `Pool`: on worker threads, several peers at a time; the event loop keeps moving.
- `Synchronous`: right away on the caller's thread, with no threads anywhere: for tests on a
  fake clock, where time would run on unseen while a thread works.

`runner.on_loop` says whether the work runs on the event loop's thread (compiled checks then
keep the GIL, see core.compression.kernels); `runner.threads` whether the sum beside it may
use threads of its own. `decode` runs one decoder on a runner and turns its refusal into the
peer's skip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import attrs
import torch

from core.codec import Expected
from core.compression import TopKCompressor, compiled_sum
from core.exchange import Fetched, Status

log = logging.getLogger(__name__)
R = TypeVar("R")
T = TypeVar("T")

# Payloads up to this size (the download limit decides) are decoded on the event loop when
# the compiled sum serves their format: the longest a decode can hold the loop follows
# from it (docs/gather.md has the figures).
INLINE_BYTES = 4 << 20


class Rejected(ValueError):
    """Raised by a decoder for a payload that is invalid; `reason` is a short slug."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class DecodeRunner(Protocol):
    on_loop: bool
    threads: bool

    async def run(self, fn: Callable[..., R], *args: Any) -> R: ...

    def close(self) -> None: ...


class Synchronous:
    on_loop = True
    threads = False

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        return fn(*args)

    def close(self) -> None:
        pass


@attrs.define
class Inline:
    """Short calls on the event loop, in slices of its time: a burst of fetches finishing
    together would otherwise be decoded in one pass of the loop, holding its timers and I/O
    back for all of it. Calls run back to back for at most `slice_seconds`; a call after
    that first lets the loop make a pass."""

    on_loop = True
    threads = True

    slice_seconds: float = attrs.field(default=0.02, validator=attrs.validators.gt(0))
    _slice: tuple[asyncio.AbstractEventLoop, float] | None = attrs.field(default=None, init=False)

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        loop = asyncio.get_running_loop()
        while True:
            began = self._slice[1] if self._slice is not None and self._slice[0] is loop else None
            if began is None:  # the loop has made a pass since the last slice began
                self._slice = (loop, loop.time())
                loop.call_soon(self._end_slice, loop)  # runs after the loop's next poll
                break
            if loop.time() - began < self.slice_seconds:
                break
            await asyncio.sleep(0)
        return fn(*args)

    def _end_slice(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._slice is not None and self._slice[0] is loop:
            self._slice = None

    def close(self) -> None:
        pass


@attrs.define
class Pool:
    """Calls on a bounded pool of worker threads. More threads than cores only thrash
    (docs/gather.md)."""

    on_loop = False
    threads = True

    workers: int = attrs.field(default=2, validator=attrs.validators.gt(0))
    _pool: ThreadPoolExecutor | None = attrs.field(default=None, init=False)

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Let the threads go (pending work still finishes)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def runner_for(
    expected: Expected,
    device: torch.device | str = "cpu",
    *,
    max_bytes: int | None = None,
    workers: int = 2,
    sketch: bool = False,
) -> DecodeRunner:
    """The runner a gather of these payloads wants: `Inline` where the compiled sum serves
    the format, no copy `sketch` (torch work) is made and a payload (at most `max_bytes`,
    else the codec's size limit) decodes quickly; `Pool(workers)` otherwise."""
    codec = expected.codec
    limit = expected.size_limit() if max_bytes is None else max_bytes
    compiled = isinstance(codec, TopKCompressor) and compiled_sum.runs(codec.params, device)
    if compiled and not sketch and limit <= INLINE_BYTES:
        return Inline()
    return Pool(workers)


async def decode(
    runner: DecodeRunner, decoder: Callable[[int, bytes], T], fetched: Fetched[bytes]
) -> Fetched[T]:
    """`fetched` with its bytes decoded by `decoder(uid, data)` on `runner`. A refusal
    (`Rejected`, any ValueError) is INVALID and any other failure an ERROR, with the reason:
    never an exception for the peer's fault."""
    assert fetched.uid is not None and fetched.payload is not None
    try:
        payload = await runner.run(decoder, fetched.uid, fetched.payload)
    except Rejected as exc:
        return _failed(fetched, Status.INVALID, f"{exc.reason}: {exc}")
    except ValueError as exc:
        return _failed(fetched, Status.INVALID, f"invalid: {exc}")
    except Exception as exc:  # a decoder bug must not take the gather down
        log.exception("decoder failed on uid %s's payload", fetched.uid)
        return _failed(fetched, Status.ERROR, f"decode_error: {type(exc).__name__}: {exc}")
    return attrs.evolve(fetched, payload=payload)  # type: ignore[return-value]


def _failed(fetched: Fetched, status: Status, reason: str) -> Fetched:
    return attrs.evolve(fetched, status=status, reason=reason, payload=None)
