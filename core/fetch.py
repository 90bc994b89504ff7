"""The concurrent fetch engine under gather: many peers, one deadline, reserves.

Each peer is fetched, time-checked and decoded by `Exchange.get`; a successful payload is
handed to `on_ok` while the fetch still holds its concurrency slot, so at most `concurrency`
payloads are alive at once whatever the number of peers (memory is bounded by concurrency,
not by peer count). Every failure is recorded with its reason, and the next reserve peer, in
order, takes the failed peer's place while time remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

import attrs

from core.exchange import Exchange, Fetched, Status
from core.keys import KeyKind
from core.windows import TimeWindow
from ports import Bucket, Clock

T = TypeVar("T")

# Real seconds allowed past the deadline for work already finishing (a decode in a thread).
_SLACK = 0.5


@attrs.frozen(kw_only=True)
class FetchSettings:
    concurrency: int = attrs.field(default=32, validator=attrs.validators.gt(0))
    # One deadline for the whole gather, in seconds from its start.
    timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    max_bytes: int | None = None
    # How long one peer may take (polling included) before its reserve is tried; None means
    # up to the gather deadline. Missing peers fail fast anyway once the time window is over.
    peer_timeout: float | None = None


def _strip(fetched: Fetched[T]) -> Fetched[T]:
    return attrs.evolve(fetched, payload=None)


async def _within(clock: Clock, work: Awaitable[T], seconds: float) -> T | None:
    """`work`'s result, or None when `seconds` pass first on `clock` (`work` is cancelled)."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        late = not task.done()
        if late:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return None if late else task.result()


async def fetch_peers(
    exchange: Exchange,
    buckets: Mapping[int, Bucket],
    uids: Iterable[int],
    window: int,
    decode: Callable[[int, bytes], T],
    on_ok: Callable[[Fetched[T]], Awaitable[None]],
    *,
    reserve_uids: Iterable[int] = (),
    time_window: TimeWindow | None = None,
    settings: FetchSettings | None = None,
    kind: KeyKind = KeyKind.GRADIENT,
    inline_decode: bool = False,
) -> list[Fetched[T]]:
    """Fetch every uid (and reserves for failures); returns one payload-free record per try.

    `decode(uid, data)` validates one peer's bytes (raising `Rejected` / ValueError).
    `on_ok` runs for each valid payload inside the fetch's slot; if it raises, that peer is
    recorded as an ERROR and a reserve is tried. `inline_decode`: `decode` is short enough
    to run on the event loop (`Exchange.get_from`'s `inline`). Never raises for a peer's
    fault.
    """
    settings = settings or FetchSettings()
    clock = exchange.clock
    deadline = clock.monotonic() + settings.timeout
    primaries = list(dict.fromkeys(uids))
    reserves = deque(u for u in dict.fromkeys(reserve_uids) if u not in primaries)
    gate = asyncio.Semaphore(settings.concurrency)
    records: list[Fetched[T]] = []

    def failed(uid: int, status: Status, reason: str) -> Fetched[T]:
        return Fetched(uid=uid, status=status, reason=reason)

    async def one(uid: int) -> Fetched[T]:
        bucket = buckets.get(uid)
        if bucket is None:
            return failed(uid, Status.ERROR, "no_bucket: uid has no bucket commitment")
        async with gate:
            remaining = deadline - clock.monotonic()
            if settings.peer_timeout is not None:
                remaining = min(remaining, settings.peer_timeout)
            if remaining <= 0:
                return failed(uid, Status.ERROR, "timeout: gather deadline passed before fetch")
            fetch = exchange.get(
                bucket,
                window,
                kind,
                functools.partial(decode, uid),
                uid=uid,
                time_window=time_window,
                timeout=remaining,
                max_bytes=settings.max_bytes,
                inline=inline_decode,
            )
            if settings.peer_timeout is None:
                got = await fetch
            else:
                # exchange.get's timeout bounds only its polling; a read that is slow itself
                # must also give way, or the reserve never gets its turn.
                got = await _within(clock, fetch, remaining + _SLACK)
                if got is None:
                    return failed(uid, Status.ERROR, f"timeout: no answer in {remaining:g} s")
            if got.ok and clock.monotonic() > deadline:
                return _strip(
                    attrs.evolve(got, status=Status.ERROR, reason="timeout: after the deadline")
                )
            if got.ok:
                try:
                    await on_ok(got)
                except Exception as exc:  # a consumer's failure is that peer's skip
                    return _strip(
                        attrs.evolve(
                            got,
                            status=Status.ERROR,
                            reason=f"rejected: {type(exc).__name__}: {exc}",
                        )
                    )
            return _strip(got)

    pending = {asyncio.ensure_future(one(uid)): uid for uid in primaries}
    try:
        while pending:
            wait_for = max(deadline - clock.monotonic(), 0.0) + _SLACK
            done, _ = await asyncio.wait(
                pending, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # the real-time deadline passed with fetches still hanging
                for task, uid in pending.items():
                    task.cancel()
                    records.append(failed(uid, Status.ERROR, "timeout: fetch still running"))
                break
            for task in done:
                uid = pending.pop(task)
                record = task.result()
                records.append(record)
                if not record.ok and reserves and clock.monotonic() < deadline:
                    nxt = reserves.popleft()
                    pending[asyncio.ensure_future(one(nxt))] = nxt
    finally:
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*pending, return_exceptions=True)
    return records


async def stream_peers(
    exchange: Exchange,
    buckets: Mapping[int, Bucket],
    uids: Iterable[int],
    window: int,
    decode: Callable[[int, bytes], T],
    **kwargs: object,
) -> AsyncIterator[Fetched[T]]:
    """Yield each valid peer's `Fetched` (payload included) as it arrives, then one
    payload-free record per failed try.

    The consumer's pace holds the fetch slots (backpressure), so a validator that evaluates
    peers one by one never has more than `concurrency` payloads in memory. The gather
    deadline runs while the consumer works: give it room for the evaluation too.
    """
    queue: asyncio.Queue[Fetched[T] | None] = asyncio.Queue(maxsize=1)

    async def hand_over(fetched: Fetched[T]) -> None:
        await queue.put(fetched)

    async def run() -> None:
        records = await fetch_peers(exchange, buckets, uids, window, decode, hand_over, **kwargs)
        for record in records:
            if not record.ok:
                await queue.put(record)
        await queue.put(None)

    runner = asyncio.ensure_future(run())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, runner}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                runner.result()  # the runner failed: raise its error here
                continue
            item = getter.result()
            if item is None:
                return
            yield item
    finally:
        runner.cancel()
        with contextlib.suppress(BaseException):
            await runner
