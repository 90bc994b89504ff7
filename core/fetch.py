"""The concurrent fetch engine under gather: many peers, one deadline, reserves.

`fetch_peers` is a stream. Each peer is fetched and time-checked by `Exchange.get`; the
stream yields each peer's bytes as they arrive, and the record of each try that failed. An
arrival keeps its concurrency slot until the consumer gives its verdict (`Peers.done`), so
at most `FetchSettings.slots` payloads are alive at once whatever the number of peers (memory
is bounded by concurrency and by `in_flight_bytes`, not by peer count). Every failure, the
consumer's verdicts included, is recorded with its reason, and the next reserve peer, in
order, takes the failed peer's place while time remains.
"""

from __future__ import annotations

import asyncio
import contextlib
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
# Payload bytes the fetches of one gather may hold at once (see FetchSettings.in_flight_bytes).
IN_FLIGHT_BYTES = 128 << 20


@attrs.frozen(kw_only=True)
class FetchSettings:
    concurrency: int = attrs.field(default=32, validator=attrs.validators.gt(0))
    # One deadline for the whole gather, in seconds from its start.
    timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    max_bytes: int | None = None
    # How long one peer may take (polling included) before its reserve is tried; None means
    # up to the gather deadline. Missing peers fail fast anyway once the time window is over.
    peer_timeout: float | None = None
    # At most this many payload bytes held at once: with `max_bytes` known, the fetches in
    # flight are cut to this over it (at least one). Large payloads that share a link all
    # arrive at its end when every one is fetched at once, and their checks and folds then
    # come after the last byte instead of beside the downloads. None: `concurrency` alone.
    in_flight_bytes: int | None = attrs.field(
        default=IN_FLIGHT_BYTES, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    # A fetch whose bytes have not all arrived this many seconds after it started gives its
    # share of `in_flight_bytes` back (it goes on under `concurrency`): a few slow peers,
    # broken or trickling on purpose, then cannot hold every share while the rest wait.
    in_flight_hold: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))

    @property
    def slots(self) -> int:
        """Peers fetched at once: `concurrency`, or fewer where `in_flight_bytes` says so."""
        if self.in_flight_bytes is None or not self.max_bytes:
            return self.concurrency
        return max(1, min(self.concurrency, self.in_flight_bytes // self.max_bytes))


def _strip(fetched: Fetched[T]) -> Fetched[T]:
    return attrs.evolve(fetched, payload=None)


async def within(clock: Clock, work: Awaitable[T], seconds: float) -> T | None:
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


class Peers:
    """The fetches of one gather: `async with fetch_peers(...) as peers`, then `async for got
    in peers` yields each arrival (an OK `Fetched` holding the bytes) and each failed try
    (payload-free). The consumer answers every arrival with `peers.done(got, outcome)`:
    `outcome` is the peer's final record (OK, or the reason it is skipped; a reserve then
    takes its place). `records` then holds one payload-free record per try."""

    def __init__(
        self,
        exchange: Exchange,
        buckets: Mapping[int, Bucket],
        uids: Iterable[int],
        window: int,
        *,
        reserve_uids: Iterable[int] = (),
        time_window: TimeWindow | None = None,
        settings: FetchSettings | None = None,
        kind: KeyKind = KeyKind.GRADIENT,
    ) -> None:
        self._exchange = exchange
        self._buckets = buckets
        self._window = window
        self._time_window = time_window
        self._settings = settings or FetchSettings()
        self._kind = kind
        self._clock: Clock = exchange.clock
        self._deadline = self._clock.monotonic() + self._settings.timeout
        self._primaries = list(dict.fromkeys(uids))
        self._reserves = deque(u for u in dict.fromkeys(reserve_uids) if u not in self._primaries)
        self._gate = asyncio.Semaphore(self._settings.concurrency)
        slots = self._settings.slots
        self._shares = asyncio.Semaphore(slots) if slots < self._settings.concurrency else None
        self._arrivals: asyncio.Queue[Fetched[bytes]] = asyncio.Queue()
        # Each fetch task as it ends: the stream waits on this and the arrivals, two futures,
        # not on every pending task (asyncio.wait over all of them is O(peers) a wake-up).
        self._finished: asyncio.Queue[asyncio.Future[Fetched]] = asyncio.Queue()
        self._verdicts: dict[int, asyncio.Future[Fetched]] = {}
        self._pending: dict[asyncio.Future[Fetched], int] = {}
        self._arrived: set[int] = set()
        self.records: list[Fetched] = []

    async def __aenter__(self) -> Peers:
        for uid in self._primaries:
            self._start(uid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        pending, self._pending = list(self._pending), {}
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*pending, return_exceptions=True)

    def done(self, arrival: Fetched[bytes], outcome: Fetched) -> None:
        """The consumer's verdict on `arrival`: frees its slot; a failed `outcome` is
        recorded as that peer's skip and brings the next reserve."""
        assert arrival.uid is not None
        verdict = self._verdicts.pop(arrival.uid, None)
        if verdict is not None and not verdict.done():
            verdict.set_result(outcome)

    def wants(self, arrival: Fetched[bytes]) -> bool:
        """Whether `arrival` still waits for its verdict (not given up at the deadline)."""
        verdict = self._verdicts.get(arrival.uid)  # type: ignore[arg-type]
        return verdict is not None and not verdict.done()

    def _start(self, uid: int) -> None:
        task = asyncio.ensure_future(self._one(uid))
        self._pending[task] = uid
        task.add_done_callback(self._finished.put_nowait)

    def _failed(self, uid: int, status: Status, reason: str) -> Fetched:
        return Fetched(uid=uid, status=status, reason=reason)

    async def _one(self, uid: int) -> Fetched:
        bucket = self._buckets.get(uid)
        if bucket is None:
            return self._failed(uid, Status.ERROR, "no_bucket: uid has no bucket commitment")
        settings, clock = self._settings, self._clock
        async with self._gate, self._share() as arrived:
            remaining = self._deadline - clock.monotonic()
            if settings.peer_timeout is not None:
                remaining = min(remaining, settings.peer_timeout)
            if remaining <= 0:
                return self._failed(
                    uid, Status.ERROR, "timeout: gather deadline passed before fetch"
                )
            fetch = self._exchange.get(
                bucket,
                self._window,
                self._kind,
                uid=uid,
                time_window=self._time_window,
                timeout=remaining,
                max_bytes=settings.max_bytes,
            )
            if settings.peer_timeout is None:
                got = await fetch
            else:
                # exchange.get's timeout bounds only its polling; a read that is slow itself
                # must also give way, or the reserve never gets its turn.
                got = await within(clock, fetch, remaining + _SLACK)
                if got is None:
                    return self._failed(uid, Status.ERROR, f"timeout: no answer in {remaining:g} s")
            if got.ok and clock.monotonic() > self._deadline:
                return _strip(
                    attrs.evolve(got, status=Status.ERROR, reason="timeout: after the deadline")
                )
            if not got.ok:
                return _strip(got)
            arrived()
            verdict: asyncio.Future[Fetched] = asyncio.get_running_loop().create_future()
            self._verdicts[uid] = verdict
            self._arrived.add(uid)
            await self._arrivals.put(got)
            return _strip(await verdict)  # the slot is held until the consumer is done

    @contextlib.asynccontextmanager
    async def _share(self) -> AsyncIterator[Callable[[], None]]:
        """A share of the in-flight budget for one fetch, held until its verdict, or given
        back `in_flight_hold` seconds after it started if its bytes have not all arrived by
        then. Yields `arrived`, to call once they have."""
        shares = self._shares
        if shares is None:
            yield lambda: None
            return
        await shares.acquire()
        held = True

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                shares.release()

        async def expire() -> None:
            await self._clock.sleep(self._settings.in_flight_hold)
            give_back()

        timer = asyncio.ensure_future(expire())
        try:
            yield timer.cancel
        finally:
            timer.cancel()
            give_back()

    async def _stream(self) -> AsyncIterator[Fetched]:
        clock = self._clock
        getter: asyncio.Future[Fetched[bytes]] | None = None
        ender: asyncio.Future[asyncio.Future[Fetched]] | None = None
        try:
            while self._pending or not self._arrivals.empty():
                if getter is None:
                    getter = asyncio.ensure_future(self._arrivals.get())
                if ender is None:
                    ender = asyncio.ensure_future(self._finished.get())
                wait_for = max(self._deadline - clock.monotonic(), 0.0) + _SLACK
                done, _ = await asyncio.wait(
                    {getter, ender}, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # the real-time deadline passed with fetches still hanging
                    for task, uid in self._pending.items():
                        task.cancel()
                        self.records.append(
                            self._failed(uid, Status.ERROR, "timeout: fetch still running")
                        )
                    self._pending = {}
                    break
                if getter in done:
                    arrival, getter = getter.result(), None
                    yield arrival
                if ender not in done:
                    continue
                ended = [ender.result()]
                ender = None
                while not self._finished.empty():
                    ended.append(self._finished.get_nowait())
                for task in ended:
                    uid = self._pending.pop(task, None)
                    if uid is None:
                        continue  # ended after the stream gave up on it
                    record = task.result()
                    self.records.append(record)
                    if record.ok:
                        continue
                    if self._reserves and clock.monotonic() < self._deadline:
                        self._start(self._reserves.popleft())
                    if record.uid not in self._arrived:  # the consumer knows its verdicts
                        yield record
        finally:
            for waiter in (getter, ender):
                if waiter is not None:
                    waiter.cancel()

    def __aiter__(self) -> AsyncIterator[Fetched]:
        return self._stream()


def fetch_peers(
    exchange: Exchange,
    buckets: Mapping[int, Bucket],
    uids: Iterable[int],
    window: int,
    **options: object,
) -> Peers:
    """The fetches of `uids` (and reserves for failures) for `window`, as a stream (`Peers`):
    `reserve_uids`, `time_window`, `settings` (`FetchSettings`) and `kind` as options.
    Never raises for a peer's fault."""
    return Peers(exchange, buckets, uids, window, **options)  # type: ignore[arg-type]
