"""Gather over a real S3 server (SeaweedFS on 127.0.0.1): 32 peers, some misbehaving."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from adapters.clock import SystemClock
from adapters.storage.s3 import S3Settings, S3StoreOpener
from core import codec
from core.aggregate import Normalisation
from core.codec import Expected, PayloadMeta
from core.compression import default_compressor
from core.exchange import Exchange
from core.fetch import FetchSettings
from core.gather import GatherSettings, gather
from core.keys import KeyKind
from core.windows import TimeWindow
from tests.support.aggregating import mean_of

pytestmark = pytest.mark.s3

V = "1"
W = 3
SHAPES = {"a.weight": (128, 256), "a.bias": (256,), "b.weight": (256, 128)}


async def test_gather_32_peers_over_seaweedfs(seaweedfs) -> None:
    comp = default_compressor()
    clock = SystemClock()
    opener = S3StoreOpener(S3Settings(max_pool_connections=16))
    names = {uid: seaweedfs.create_bucket(f"peer{uid}") for uid in range(33)}
    buckets = {uid: seaweedfs.bucket(name) for uid, name in names.items()}
    me = Exchange(opener.open(buckets[0]), opener, clock, V)
    try:
        start = clock.now() - timedelta(seconds=1)
        honest = []
        for uid in range(1, 33):
            peer = Exchange(opener.open(buckets[uid]), opener, clock, V)
            if uid % 8 == 0:
                continue  # never uploads
            if uid % 8 == 1:
                await peer.put(b"PK\x03\x04 not a payload", W, KeyKind.GRADIENT, uid)
                continue
            g = torch.Generator().manual_seed(uid)
            compressed = comp.encode({n: torch.randn(s, generator=g) for n, s in SHAPES.items()})
            meta = PayloadMeta(window=W, uid=uid, hotkey=f"hk{uid}", global_step=uid, version=V)
            await peer.put(codec.encode(compressed, meta), W, KeyKind.GRADIENT, uid)
            honest.append(compressed)
        tw = TimeWindow(start=start, end=clock.now() + timedelta(seconds=1))
        result = await gather(
            me,
            buckets,
            range(1, 33),
            W,
            Expected(version=V, codec=comp, shapes=SHAPES),
            time_window=tw,
            settings=GatherSettings(fetch=FetchSettings(concurrency=16, timeout=20)),
        )
        assert sorted(result.uids) == [u for u in range(1, 33) if u % 8 not in (0, 1)]
        assert {u: r.split(":")[0] for u, r in result.skipped.items()} == {
            u: ("not_found" if u % 8 == 0 else "invalid") for u in range(1, 33) if u % 8 in (0, 1)
        }
        assert result.success_rate == pytest.approx(24 / 32)
        expected = mean_of(comp, SHAPES, honest, normalisation=Normalisation.UNIT)
        for name in SHAPES:
            torch.testing.assert_close(result.aggregate[name], expected[name], rtol=1e-5, atol=1e-7)
        assert result.seconds < 20
    finally:
        await me.store.close()
        opener.close()
        for name in names.values():
            seaweedfs.delete_bucket(name)
