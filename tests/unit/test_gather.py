"""gather: statuses, reasons, normalisation, the aggregate against a hand-computed reference."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from adapters.clock import FakeClock
from adapters.signing import HmacSigner, HmacVerifier
from adapters.storage.memory import MemoryStoreOpener
from core import codec
from core.aggregate import Normalisation
from core.codec import Expected, PayloadMeta
from core.compression import topk_only_compressor
from core.decoding import Inline, Pool, Synchronous
from core.exchange import Exchange, ExchangeSettings, Status
from core.fetch import FetchSettings
from core.gather import GatherSettings, PeerDecoder, gather, stream
from core.keys import KeyKind
from core.windows import TimeWindow
from ports import Bucket

V = "1"
W = 7
SHAPES = {"layer.weight": (8, 16), "layer.bias": (16,)}
COMP = topk_only_compressor(target_chunk=4, topk=3)


def bucket(uid: int) -> Bucket:
    return Bucket(name=f"peer-{uid}", account_id="a", access_key_id="k", secret_access_key="s")


def grads(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * scale for n, s in SHAPES.items()}


def payload(
    uid: int,
    seed: int | None = None,
    window: int = W,
    step: int = 0,
    signer=None,
    scale: float = 1.0,
    shapes=None,
) -> bytes:
    g = grads(uid if seed is None else seed, scale)
    if shapes is not None:
        g = {n: torch.randn(s) for n, s in shapes.items()}
    meta = PayloadMeta(window=window, uid=uid, hotkey=f"hk{uid}", global_step=step, version=V)
    return codec.encode(COMP.encode(g), meta, signer=signer)


class Net:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.opener = MemoryStoreOpener(self.clock)
        self.me = Exchange(
            self.opener.open(bucket(0)),
            self.opener,
            self.clock,
            V,
            ExchangeSettings(timestamp_resolution=0),
        )
        self.buckets = {u: bucket(u) for u in range(1, 30)}
        self.expected = Expected(version=V, codec=COMP, shapes=SHAPES)
        self.hotkeys = {u: f"hk{u}" for u in range(1, 30)}

    async def upload(self, uid: int, data: bytes, as_uid: int | None = None) -> None:
        key = f"gradient-{W}-{uid if as_uid is None else as_uid}-v{V}.safetensors"
        await self.opener.open(bucket(uid)).put(key, data)

    async def gather(self, uids, **kw):
        settings = kw.pop("settings", GatherSettings(fetch=FetchSettings(timeout=5)))
        return await gather(
            self.me,
            self.buckets,
            uids,
            W,
            self.expected,
            hotkeys=self.hotkeys,
            settings=settings,
            runner=kw.pop("runner", Synchronous()),  # a fake clock sees every step
            **kw,
        )


def reference(uids, mode: Normalisation) -> dict[str, torch.Tensor]:
    dense = [COMP.decode(COMP.encode(grads(u))) for u in uids]
    out = {}
    for name in SHAPES:
        norms = [float(d[name].double().norm()) for d in dense]
        median = (
            sorted(norms)[len(norms) // 2]
            if len(norms) % 2
            else (sum(sorted(norms)[len(norms) // 2 - 1 : len(norms) // 2 + 1]) / 2)
        )
        lower = sorted(norms)[(len(norms) - 1) // 2]  # torch.median's, Templar's
        total = torch.zeros(SHAPES[name])
        for d, n in zip(dense, norms, strict=True):
            w = {
                Normalisation.NONE: 1.0,
                Normalisation.UNIT: 1 / n,
                Normalisation.MEDIAN_CLIP: min(1.0, median / n),
                Normalisation.KEPT_MEAN: min(1.0, lower / n),
            }[mode]
            total += d[name] * w
        if mode is Normalisation.KEPT_MEAN:  # over the peers that kept each entry
            kept = sum((d[name] != 0).to(torch.float32) for d in dense)
            out[name] = total / kept.clamp(min=1)
        else:
            out[name] = total / len(dense)
    return out


@pytest.mark.parametrize("mode", list(Normalisation))
async def test_aggregate_matches_a_hand_computed_reference(mode: Normalisation) -> None:
    net = Net()
    for uid in (1, 2, 3, 4):
        await net.upload(uid, payload(uid, step=10 + uid))
    result = await net.gather([1, 2, 3, 4], settings=GatherSettings(normalisation=mode))
    assert result.ok and sorted(result.uids) == [1, 2, 3, 4]
    assert result.global_steps == {1: 11, 2: 12, 3: 13, 4: 14}
    ref = reference([1, 2, 3, 4], mode)
    for name in SHAPES:
        torch.testing.assert_close(result.aggregate[name], ref[name], rtol=1e-6, atol=1e-7)
    if mode is Normalisation.UNIT:
        assert all(
            abs(n["layer.bias"] - float(COMP.decode(COMP.encode(grads(u)))["layer.bias"].norm()))
            < 1e-5
            for u, n in result.norms.items()
        )


async def test_integer_gradients_sum_exactly_without_normalisation() -> None:
    net = Net()
    for uid in (1, 2):
        g = {n: torch.full(s, float(uid)) for n, s in SHAPES.items()}
        meta = PayloadMeta(window=W, uid=uid, hotkey=f"hk{uid}", global_step=0, version=V)
        await net.upload(uid, codec.encode(COMP.encode(g), meta))
    result = await net.gather([1, 2], settings=GatherSettings(normalisation=Normalisation.NONE))
    expect = {
        n: (COMP.decode(COMP.encode({k: torch.full(s, 1.0) for k, s in SHAPES.items()}))[n] * 1.5)
        for n in SHAPES
    }
    for name in SHAPES:
        assert torch.equal(result.aggregate[name], expect[name])


async def test_every_kind_of_failure_is_a_skip_with_its_reason() -> None:
    net = Net()
    await net.upload(1, payload(1))  # early
    net.clock.advance(1)
    tw = TimeWindow.after(net.clock.now(), 10)
    await net.upload(2, payload(2))  # fine
    await net.upload(3, b"\x80\x04garbage pickle-ish")  # not safetensors
    await net.upload(4, payload(4, window=W - 1))  # replayed from an older window
    await net.upload(5, payload(6), as_uid=5)  # uid 6's payload under uid 5's key
    await net.upload(7, payload(7, shapes={"layer.weight": (4, 4), "layer.bias": (16,)}))
    await net.upload(8, payload(8, scale=float("nan")))  # NaN values
    net.clock.advance(11)
    await net.upload(9, payload(9))  # late
    result = await net.gather(range(1, 11), time_window=tw)
    reasons = {u: r.split(":")[0] for u, r in result.skipped.items()}
    assert result.uids == (2,)
    assert reasons == {
        1: "too_early",
        3: "invalid",
        4: "invalid",
        5: "invalid",
        7: "invalid",
        6: "not_found",
        8: "invalid",
        9: "too_late",
        10: "not_found",
    }
    detail = {u: result.skipped[u].split(": ")[1] for u in (3, 4, 5, 7, 8)}
    assert detail[4] == "window_mismatch" and detail[5] == "uid_mismatch"
    assert detail[8] == "non_finite"
    assert result.success_rate == pytest.approx(0.1)
    assert result.download_bytes > 0


async def test_min_peers_and_reserves() -> None:
    net = Net()
    tw = TimeWindow.after(net.clock.now(), 10)
    for uid in (1, 5, 6):
        await net.upload(uid, payload(uid))
    net.clock.advance(100)  # gathering after the window: missing peers fail at once
    few = await net.gather(
        [1, 2, 3],
        time_window=tw,
        settings=GatherSettings(min_peers=2, fetch=FetchSettings(timeout=5)),
    )
    assert not few.ok and few.uids == (1,) and set(few.skipped) == {2, 3}
    full = await net.gather(
        [1, 2, 3],
        reserve_uids=[5, 6, 8],
        time_window=tw,
        settings=GatherSettings(min_peers=2, fetch=FetchSettings(timeout=5)),
    )
    assert full.ok and sorted(full.uids) == [1, 5, 6]
    assert full.success_rate == pytest.approx(1.0)


async def test_signatures_are_required_when_configured() -> None:
    net = Net()
    keys = {f"hk{u}": f"secret-{u}".encode() for u in range(1, 5)}
    net.expected = Expected(
        version=V, codec=COMP, shapes=SHAPES, require_signature=True, hotkey="placeholder"
    )
    await net.upload(1, payload(1, signer=HmacSigner(keys["hk1"])))
    await net.upload(2, payload(2))  # unsigned
    await net.upload(3, payload(3, signer=HmacSigner(b"not-mine")))  # forged
    result = await net.gather([1, 2, 3], verifier=HmacVerifier(keys))
    assert result.uids == (1,)
    assert result.skipped[2].split(": ")[1] == "unsigned"
    assert result.skipped[3].split(": ")[1] == "bad_signature"


async def test_copied_gradients_are_flagged() -> None:
    net = Net()
    original = grads(1)
    for uid, g in ((1, original), (2, {n: t * 1.01 for n, t in original.items()}), (3, grads(3))):
        meta = PayloadMeta(window=W, uid=uid, hotkey=f"hk{uid}", global_step=0, version=V)
        await net.upload(uid, codec.encode(COMP.encode(g), meta))
    result = await net.gather([1, 2, 3], settings=GatherSettings(duplicate_threshold=0.9))
    assert [(a, b) for a, b, _ in result.duplicates] == [(1, 2)]
    assert result.ok and len(result.uids) == 3  # flagged, not dropped: the validator decides


async def test_stream_yields_decoded_payloads() -> None:
    net = Net()
    for uid in (1, 2):
        await net.upload(uid, payload(uid, step=uid))
    async with contextlib.aclosing(
        stream(
            net.me,
            net.buckets,
            [1, 2, 3],
            W,
            net.expected,
            settings=FetchSettings(timeout=1),
            runner=Synchronous(),
        )
    ) as it:
        items = [f async for f in it]
    ok = {f.uid: f.payload.meta.global_step for f in items if f.ok}
    assert ok == {1: 1, 2: 2}
    assert [(f.uid, f.status) for f in items if not f.ok] == [(3, Status.NOT_FOUND)]


async def test_aggregator_bucket_payloads_use_the_same_path() -> None:
    net = Net()
    meta = PayloadMeta(window=W, uid=0, hotkey="hk0", global_step=3, version=V)
    await net.opener.open(bucket(1)).put(
        f"aggregator-{W}-v{V}.safetensors", codec.encode(COMP.encode(grads(1)), meta)
    )
    result = await gather(
        net.me,
        {0: bucket(1)},
        [0],
        W,
        net.expected,
        kind=KeyKind.AGGREGATOR,
        settings=GatherSettings(normalisation=Normalisation.NONE),
        runner=Synchronous(),
    )
    assert result.ok and result.global_steps == {0: 3}


@pytest.mark.parametrize("runner", [Inline(), Pool(2)], ids=["inline", "pool"])
async def test_the_runner_says_where_payloads_decode_and_the_aggregate_does_not_care(
    monkeypatch, runner
) -> None:
    """`Inline` decodes on the event loop (no trip between threads), `Pool` in workers."""
    net = Net()
    for uid in (1, 2, 3):
        await net.upload(uid, payload(uid))
    threads = set()
    real = PeerDecoder.__call__

    def spy(self, uid, data):
        threads.add(threading.get_ident())
        return real(self, uid, data)

    monkeypatch.setattr(PeerDecoder, "__call__", spy)
    try:
        result = await net.gather([1, 2, 3], runner=runner)
    finally:
        runner.close()
    assert sorted(result.uids) == [1, 2, 3]
    assert (threads == {threading.get_ident()}) == runner.on_loop
    want = reference([1, 2, 3], Normalisation.UNIT)
    for name in SHAPES:
        torch.testing.assert_close(result.aggregate[name], want[name], rtol=1e-5, atol=1e-6)
