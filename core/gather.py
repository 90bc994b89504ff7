"""Gather: fetch, validate, normalise and average many peers' gradients for one window.

The seed's flowchart, step by step: `fetch_peers` streams the peers' bytes (core/fetch.py),
a `DecodeRunner` validates each (core/decoding.py, core/codec.py), the `Aggregator`
normalises and adds it (core/aggregate.py), and every failure is a skip with its reason.

The result says who contributed, who was skipped and why, and what it cost. A peer can only
ever cost us its own skip: every failure (missing, early, late, oversized, malformed,
unsigned, a copy of another peer) becomes a reason in `skipped`, never an exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping

import attrs
import torch

from core import decoding, duplicates, payload_format
from core.aggregate import Aggregator, Normalisation, Peer
from core.codec import Expected, InvalidPayload, Payload
from core.decoding import DecodeRunner, Rejected
from core.exchange import Exchange, Fetched, Status
from core.fetch import FetchSettings, Peers, fetch_peers
from core.keys import KeyKind
from core.payload_format import PayloadFormat
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
    """Decodes one peer's bytes against what we expect of that uid. `on_loop`: it runs on
    the event loop's thread (the compiled checks then keep the GIL)."""

    def __init__(
        self,
        expected: Expected,
        window: int,
        hotkeys: Mapping[int, str] | None = None,
        verifier: Verifier | None = None,
        *,
        on_loop: bool = False,
        payloads: PayloadFormat = payload_format.NATIVE,
    ) -> None:
        self._payloads = payloads
        self._expected = expected
        self._window = window
        self._hotkeys = hotkeys or {}
        self._verifier = verifier
        self.on_loop = on_loop

    def __call__(self, uid: int, data: bytes) -> Payload:
        hotkey = self._hotkeys.get(uid)
        if self._expected.require_signature and hotkey is None:
            raise Rejected("unsigned", f"uid {uid} has no hotkey on the metagraph")
        expected = self._expected.for_peer(self._window, uid, hotkey)
        try:
            return self._payloads.decode(
                data, expected, verifier=self._verifier, on_loop=self.on_loop
            )
        except InvalidPayload as exc:
            raise Rejected(exc.reason, exc.message) from None


def _reason(record: Fetched) -> str:
    return f"{record.status.value}: {record.reason}" if record.reason else record.status.value


@attrs.frozen(eq=False)
class _Valid:
    """A validated peer: its step, its prepared sum work, its copy sketch."""

    global_step: int
    peer: Peer | None = attrs.field(repr=False)
    signature: torch.Tensor | None = attrs.field(repr=False)


def _bounded(fetch: FetchSettings, expected: Expected, payloads: PayloadFormat) -> FetchSettings:
    """Oversized objects are refused before they are downloaded."""
    if fetch.max_bytes is None:
        return attrs.evolve(fetch, max_bytes=payloads.size_limit(expected))
    return fetch


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
    runner: DecodeRunner | None = None,
    payloads: PayloadFormat = payload_format.NATIVE,
) -> GatherResult:
    """Gather `uids` (reserves replacing failures) for `window` into one normalised mean.

    `runner`: where payloads are decoded (None: `decoding.runner_for` picks, and the runner
    lives for this gather only)."""
    settings = settings or GatherSettings()
    started = exchange.clock.monotonic()
    uids = list(dict.fromkeys(uids))
    fetch = _bounded(settings.fetch, expected, payloads)
    sketch = settings.duplicate_threshold is not None
    own = runner is None
    if runner is None:
        runner = decoding.runner_for(expected, device, max_bytes=fetch.max_bytes, sketch=sketch)
    aggregator = Aggregator(
        expected.codec,
        expected.shapes,
        device=device,
        normalisation=settings.normalisation,
        peers=len(uids),
        background=runner.threads,
    )
    decoder = PeerDecoder(
        expected, window, hotkeys, verifier, on_loop=runner.on_loop, payloads=payloads
    )
    valid: dict[int, _Valid] = {}
    norms: dict[int, dict[str, float]] = {}

    def validate(uid: int, data: bytes) -> _Valid:
        # Validation, normalisation's parallel part and the copy sketch, several peers at a
        # time when the runner has threads: the serial add stays short, and a waiting peer
        # holds only what the add needs.
        payload = decoder(uid, data)
        checked = payload.checked
        assert checked is not None
        signature = duplicates.signature(expected.codec, checked.compressed) if sketch else None
        peer = aggregator.prepare(checked, on_loop=runner.on_loop)
        return _Valid(payload.meta.global_step, peer, signature)

    async def take(peers: Peers, got: Fetched[bytes]) -> None:
        outcome = await decoding.decode(runner, validate, got)
        if outcome.ok and peers.wants(got):  # a peer given up at the deadline adds nothing
            assert outcome.uid is not None and outcome.payload is not None
            try:
                norms[outcome.uid] = await aggregator.add(outcome.payload.peer)
                valid[outcome.uid] = attrs.evolve(outcome.payload, peer=None)
            except Exception as exc:  # a sum's refusal is that peer's skip
                reason = f"rejected: {type(exc).__name__}: {exc}"
                outcome = attrs.evolve(outcome, status=Status.ERROR, reason=reason)
        peers.done(got, outcome)

    try:
        async with (
            fetch_peers(
                exchange,
                buckets,
                uids,
                window,
                reserve_uids=reserve_uids,
                time_window=time_window,
                settings=fetch,
                kind=kind,
            ) as peers,
            asyncio.TaskGroup() as adding,
        ):
            async for got in peers:
                if got.ok:
                    adding.create_task(take(peers, got))
    finally:
        if own:
            runner.close()
    records = peers.records
    used = tuple(r.uid for r in records if r.ok and r.uid is not None)
    signatures = {u: v.signature for u, v in valid.items() if v.signature is not None}
    return GatherResult(
        window=window,
        aggregate=aggregator.result() if len(used) >= max(settings.min_peers, 1) else None,
        uids=used,
        skipped={r.uid: _reason(r) for r in records if not r.ok and r.uid is not None},
        global_steps={u: valid[u].global_step for u in used},
        success_rate=len(used) / len(uids) if uids else 0.0,
        download_bytes=sum(r.nbytes for r in records),
        seconds=exchange.clock.monotonic() - started,
        norms=norms,
        duplicates=duplicates.similar_pairs(signatures, settings.duplicate_threshold)
        if sketch
        else (),
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
    settings: FetchSettings | None = None,
    runner: DecodeRunner | None = None,
    payloads: PayloadFormat = payload_format.NATIVE,
    **options: object,
) -> AsyncIterator[Fetched[Payload]]:
    """Each valid peer's decoded payload as it arrives, then a record per failed peer.

    For validators that evaluate peers one by one: a peer keeps its fetch slot until the
    consumer asks for the next one. Use `contextlib.aclosing` to stop early. `runner` as
    in `gather` (None: a `decoding.Pool` for this stream); `options` as `fetch_peers`'s.
    """
    own = runner is None
    if runner is None:
        runner = decoding.Pool()
    decoder = PeerDecoder(
        expected, window, hotkeys, verifier, on_loop=runner.on_loop, payloads=payloads
    )
    fetch = _bounded(settings or FetchSettings(), expected, payloads)
    failed: list[Fetched] = []
    try:
        async with fetch_peers(exchange, buckets, uids, window, settings=fetch, **options) as peers:
            async for got in peers:
                if not got.ok:
                    failed.append(got)
                    continue
                decoded = await decoding.decode(runner, decoder, got)
                try:
                    if decoded.ok:
                        yield decoded
                    else:
                        failed.append(decoded)
                finally:
                    peers.done(got, decoded)
        for record in failed:
            yield record
    finally:
        if own:
            runner.close()
