"""Gather: fetch, validate, normalise and average many peers' gradients for one window.

The result says who contributed, who was skipped and why, and what it cost. A peer can only
ever cost us its own skip: every failure (missing, early, late, oversized, malformed,
unsigned, a copy of another peer) becomes a reason in `skipped`, never an exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

import attrs
import torch

from core import codec, duplicates
from core.aggregate import Aggregator, Normalisation, Peer
from core.codec import Expected, InvalidPayload, Payload
from core.compression import TopKCompressor, compiled_sum
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
    # decides) are decoded on the event loop instead of a worker thread: a compiled decode
    # of a default payload is shorter than the trips between threads it saves
    # (docs/gather.md has the figures). 0: always a worker thread.
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
    ) -> None:
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
            return codec.decode(data, expected, verifier=self._verifier, on_loop=self.on_loop)
        except InvalidPayload as exc:
            raise Rejected(exc.reason, exc.message) from None


def _reason(record: Fetched) -> str:
    return f"{record.status.value}: {record.reason}" if record.reason else record.status.value


@attrs.frozen(eq=False)
class _Valid:
    """A peer through validation: its step, its prepared sum work, its copy sketch."""

    global_step: int
    peer: Peer
    signature: torch.Tensor | None


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
    started = exchange.clock.monotonic()
    uids = list(dict.fromkeys(uids))
    threads = exchange.settings.decode_in_thread
    aggregator = Aggregator(
        expected.codec,
        expected.shapes,
        device=device,
        normalisation=settings.normalisation,
        peers=len(uids),
        background=threads,
    )
    fetch = settings.fetch
    if fetch.max_bytes is None:  # refuse oversized objects before downloading them
        fetch = attrs.evolve(fetch, max_bytes=expected.size_limit())
    sketch = settings.duplicate_threshold is not None
    # Short compiled decodes run on the event loop (see `inline_decode_bytes`); a copy
    # sketch is torch work, for a worker thread.
    inline = _compiled(expected, device) and not sketch
    inline = inline and fetch.max_bytes <= settings.inline_decode_bytes
    decoder = PeerDecoder(expected, window, hotkeys, verifier, on_loop=inline or not threads)
    norms: dict[int, dict[str, float]] = {}
    valid: dict[int, _Valid] = {}

    def validate(uid: int, data: bytes) -> _Valid:
        # Validate, normalise's parallel part and the copy sketch, several peers at a
        # time: the serial add stays short, and a waiting peer holds only what it needs.
        payload = decoder(uid, data)
        checked = payload.checked
        assert checked is not None
        signature = duplicates.signature(expected.codec, checked.compressed) if sketch else None
        peer = aggregator.prepare(checked, on_loop=decoder.on_loop)
        return _Valid(payload.meta.global_step, peer, signature)

    async def aggregate(fetched: Fetched[_Valid]) -> None:
        assert fetched.payload is not None and fetched.uid is not None
        norms[fetched.uid] = await aggregator.add(fetched.payload.peer)
        valid[fetched.uid] = attrs.evolve(fetched.payload, peer=None)

    records = await fetch_peers(
        exchange,
        buckets,
        uids,
        window,
        validate,
        aggregate,
        reserve_uids=reserve_uids,
        time_window=time_window,
        settings=fetch,
        kind=kind,
        inline_decode=inline,
    )
    used = tuple(r.uid for r in records if r.ok and r.uid is not None)
    skipped = {r.uid: _reason(r) for r in records if not r.ok and r.uid is not None}
    signatures = {u: v.signature for u, v in valid.items() if v.signature is not None}
    return GatherResult(
        window=window,
        aggregate=aggregator.result() if len(used) >= max(settings.min_peers, 1) else None,
        uids=used,
        skipped=skipped,
        global_steps={u: v.global_step for u, v in valid.items()},
        success_rate=len(used) / len(uids) if uids else 0.0,
        download_bytes=sum(r.nbytes for r in records),
        seconds=exchange.clock.monotonic() - started,
        norms=norms,
        duplicates=duplicates.similar_pairs(signatures, settings.duplicate_threshold)
        if sketch
        else (),
    )


def _compiled(expected: Expected, device: torch.device | str) -> bool:
    codec = expected.codec
    return isinstance(codec, TopKCompressor) and compiled_sum.runs(codec.params, device)


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
    # `Exchange.get` decodes in a worker thread unless the exchange decodes on the loop.
    on_loop = not exchange.settings.decode_in_thread
    decoder = PeerDecoder(expected, window, hotkeys, verifier, on_loop=on_loop)
    fetch = kwargs.pop("settings", None) or FetchSettings()
    if fetch.max_bytes is None:  # refuse oversized objects before downloading them
        fetch = attrs.evolve(fetch, max_bytes=expected.size_limit())
    async for fetched in stream_peers(
        exchange, buckets, uids, window, decoder, settings=fetch, **kwargs
    ):
        yield fetched
