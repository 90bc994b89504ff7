"""Gather: fetch, validate, normalise and average many peers' gradients for one window.

The result says who contributed, who was skipped and why, and what it cost. A peer can only
ever cost us its own skip: every failure (missing, early, late, oversized, malformed,
unsigned, a copy of another peer) becomes a reason in `skipped`, never an exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import attrs
import torch

from core import codec, duplicates
from core.aggregate import Aggregator, Normalisation
from core.codec import Expected, InvalidPayload, Payload
from core.exchange import Exchange, Fetched, Rejected
from core.fetch import FetchSettings, fetch_peers, stream_peers
from core.keys import KeyKind
from core.windows import TimeWindow
from ports import Bucket
from ports.signing import Verifier


@attrs.frozen(kw_only=True)
class GatherSettings:
    fetch: FetchSettings = attrs.Factory(FetchSettings)
    normalisation: Normalisation = Normalisation.UNIT
    # Fewer valid peers than this and there is no aggregate (the reasons are still reported).
    min_peers: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    # Flag pairs of peers whose kept-index sets are at least this similar (None: off).
    duplicate_threshold: float | None = None
    # With the compiled CPU sum, payloads of at most this many bytes (the download limit
    # decides) are decoded on the event loop instead of a worker thread: at ~0.5 ms for a
    # 0.7 MB payload the trips between threads cost more than the decode (measured
    # 1.71-1.77x against 1.88-2.11x the raw GET at 64 peers). 0: always a worker thread.
    inline_decode_bytes: int = attrs.field(default=4 << 20, validator=attrs.validators.ge(0))


@attrs.frozen(kw_only=True)
class GatherResult:
    window: int
    # Mean of the normalised gradients per parameter; None below min_peers.
    aggregate: dict[str, torch.Tensor] | None = attrs.field(repr=False)
    uids: tuple[int, ...]
    skipped: dict[int, str]
    global_steps: dict[int, int]
    # Valid peers over peers asked for (reserves fill in for failures, not on top).
    success_rate: float
    download_bytes: int
    seconds: float
    norms: dict[int, dict[str, float]] = attrs.field(repr=False, factory=dict)
    duplicates: tuple[tuple[int, int, float], ...] = ()

    @property
    def ok(self) -> bool:
        return self.aggregate is not None


class PeerDecoder:
    """Decodes one peer's bytes against what we expect of that uid (run in a worker thread)."""

    def __init__(
        self,
        expected: Expected,
        window: int,
        hotkeys: Mapping[int, str] | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self._expected = expected
        self._window = window
        self._hotkeys = hotkeys or {}
        self._verifier = verifier

    def __call__(self, uid: int, data: bytes) -> Payload:
        hotkey = self._hotkeys.get(uid)
        if self._expected.require_signature and hotkey is None:
            raise Rejected("unsigned", f"uid {uid} has no hotkey on the metagraph")
        expected = self._expected.for_peer(self._window, uid, hotkey)
        try:
            return codec.decode(data, expected, verifier=self._verifier)
        except InvalidPayload as exc:
            raise Rejected(exc.reason, exc.message) from None


def _reason(record: Fetched) -> str:
    return f"{record.status.value}: {record.reason}" if record.reason else record.status.value


async def gather(
    exchange: Exchange,
    buckets: Mapping[int, Bucket],
    uids: Iterable[int],
    window: int,
    expected: Expected,
    *,
    reserve_uids: Iterable[int] = (),
    time_window: TimeWindow | None = None,
    hotkeys: Mapping[int, str] | None = None,
    verifier: Verifier | None = None,
    settings: GatherSettings | None = None,
    device: torch.device | str = "cpu",
    kind: KeyKind = KeyKind.GRADIENT,
) -> GatherResult:
    """Gather `uids` (reserves replacing failures) for `window` into one normalised mean."""
    settings = settings or GatherSettings()
    clock = exchange.clock
    started = clock.monotonic()
    uids = list(dict.fromkeys(uids))
    aggregator = Aggregator(
        expected.codec,
        expected.shapes,
        device=device,
        normalisation=settings.normalisation,
        peers=len(uids),
    )
    global_steps: dict[int, int] = {}
    norms: dict[int, dict[str, float]] = {}
    signatures: dict[int, torch.Tensor] = {}
    # The fold is serial (one shared sum): a thread of its own, so that it never waits behind
    # the decode pool's queue while prepared peers pile up in memory. Where adding only
    # queues the peer (the compiled CPU sum folds batches on its own thread) it runs right
    # here on the loop instead: one trip between threads less per peer, measured 5-10%
    # faster at 64-256 peers with less memory held.
    folder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gather-fold")
    fold_here = aggregator.queues and settings.duplicate_threshold is None

    decoder = PeerDecoder(expected, window, hotkeys, verifier)

    keep_compressed = (
        settings.normalisation is Normalisation.MEDIAN_CLIP
        or settings.duplicate_threshold is not None
    )

    def decode(uid: int, data: bytes) -> tuple[Payload, object]:
        # Runs in a worker thread, several peers at a time (or on the loop when short, see
        # `inline_decode_bytes`): validate and prepare the fold here, so the serial part
        # (adding into the shared sum) stays short. The wire tensors are dropped once
        # prepared unless needed later, so a peer waiting for its turn holds only what the
        # fold needs.
        payload = decoder(uid, data)
        prepared = aggregator.prepare(payload.compressed)
        if not keep_compressed:
            payload = attrs.evolve(payload, compressed=None)
        return payload, prepared

    def fold(uid: int, payload: Payload, prepared: object) -> None:
        norms[uid] = aggregator.add(payload.compressed, prepared)
        if settings.duplicate_threshold is not None:
            signatures[uid] = duplicates.signature(expected.codec, payload.compressed)

    async def on_ok(fetched: Fetched[tuple[Payload, object]]) -> None:
        assert fetched.payload is not None and fetched.uid is not None
        payload, prepared = fetched.payload
        if not exchange.settings.decode_in_thread:
            fold(fetched.uid, payload, prepared)
        elif fold_here:
            busy = aggregator.busy()
            if busy is not None:  # a batch is still folding: wait here, not in the loop
                await asyncio.wrap_future(busy)
            fold(fetched.uid, payload, prepared)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(folder, fold, fetched.uid, payload, prepared)
        global_steps[fetched.uid] = payload.meta.global_step

    fetch = settings.fetch
    if fetch.max_bytes is None:  # refuse oversized objects before downloading them
        fetch = attrs.evolve(fetch, max_bytes=expected.size_limit())
    # Decoding a payload on the compiled path is one bounded compiled pass plus a little
    # Python; the longest it can hold the loop follows from the download limit.
    inline = fold_here and fetch.max_bytes <= settings.inline_decode_bytes
    try:
        records = await fetch_peers(
            exchange,
            buckets,
            uids,
            window,
            decode,
            on_ok,
            reserve_uids=reserve_uids,
            time_window=time_window,
            settings=fetch,
            kind=kind,
            inline_decode=inline,
        )
    finally:
        folder.shutdown(wait=False)  # every fold was awaited; never block the loop here
    used = tuple(r.uid for r in records if r.ok and r.uid is not None)
    skipped = {r.uid: _reason(r) for r in records if not r.ok and r.uid is not None}
    aggregate = aggregator.finish() if len(used) >= max(settings.min_peers, 1) else None
    pairs: tuple[tuple[int, int, float], ...] = ()
    if settings.duplicate_threshold is not None:
        pairs = duplicates.similar_pairs(signatures, settings.duplicate_threshold)
    return GatherResult(
        window=window,
        aggregate=aggregate,
        uids=used,
        skipped=skipped,
        global_steps=global_steps,
        success_rate=len(used) / len(uids) if uids else 0.0,
        download_bytes=sum(r.nbytes for r in records),
        seconds=clock.monotonic() - started,
        norms=norms,
        duplicates=pairs,
    )


async def stream(
    exchange: Exchange,
    buckets: Mapping[int, Bucket],
    uids: Iterable[int],
    window: int,
    expected: Expected,
    *,
    hotkeys: Mapping[int, str] | None = None,
    verifier: Verifier | None = None,
    **kwargs: object,
) -> AsyncIterator[Fetched[Payload]]:
    """Each valid peer's decoded payload as it arrives, then a record per failed peer.

    For validators that evaluate peers one by one; use `contextlib.aclosing` to stop early.
    """
    decoder = PeerDecoder(expected, window, hotkeys, verifier)
    fetch = kwargs.pop("settings", None) or FetchSettings()
    if fetch.max_bytes is None:  # refuse oversized objects before downloading them
        fetch = attrs.evolve(fetch, max_bytes=expected.size_limit())
    async for fetched in stream_peers(
        exchange, buckets, uids, window, decoder, settings=fetch, **kwargs
    ):
        yield fetched
