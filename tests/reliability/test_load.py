"""Load: 256 peers over SeaweedFS, a third of them misbehaving, gathered for 10 windows.

Peak memory stays within the gather issue's bound (dense model + concurrency x payload,
+20%, plus a fixed allowance for the interpreter and allocator), far below what holding every
payload would take; file descriptors, threads, asyncio tasks and memory do not grow from one
window to the next.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import psutil
import pytest
import torch

from adapters.clock import SystemClock
from adapters.storage.s3 import S3Settings, S3StoreOpener
from bench.common import PeakRss
from core import codec
from core.codec import Expected, PayloadMeta
from core.compression import TopKCompressor, TopKParams
from core.exchange import Exchange, ExchangeSettings
from core.fetch import FetchSettings
from core.gather import GatherSettings, gather
from core.windows import TimeWindow
from tests.reliability.support import V, W, rebuild, split
from tests.s3.server import SeaweedServer
from tests.support.aggregating import mean_of

pytestmark = [pytest.mark.s3, pytest.mark.slow]

PEERS = 256
CONCURRENCY = 16
# ~183 KB payloads (top-k 512 of 4096, float32 values, 12-bit packed indices: the
# Elias-Fano code's would be smaller) of a 263K-parameter model, so that holding every
# payload (47 MB) would be far over the bound, while uploads stay quick.
SHAPES = {"w1": (256, 512), "w2": (512, 256), "b": (512,)}
COMP = TopKCompressor(
    TopKParams(target_chunk=64, topk=512, quantization_bins=0, index_code="packed")
)
DISTINCT = 8
MiB = 1 << 20
ALLOWANCE = 16 * MiB  # interpreter, allocator arenas, thread stacks touched by a gather
LEAK_TOLERANCE = 24 * MiB  # one window moves 31 MB of payloads; a leak shows many times that
KINDS = ("missing", "garbage", "oversized", "replay", "non_finite", "late", "truncated")
REASON = {
    "missing": "not_found",
    "garbage": "invalid: header_too_large",
    "oversized": "invalid: too_large",
    "replay": "invalid: window_mismatch",
    "non_finite": "invalid: non_finite",
    "late": "too_late",
    "truncated": "invalid: bad_header",
}


def kind_of(uid: int) -> str | None:
    return KINDS[(uid // 3) % len(KINDS)] if uid % 3 == 0 else None


def grads(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


class Load:
    def __init__(self, server: SeaweedServer) -> None:
        self.server = server
        self.names = [server.create_bucket("load") for _ in range(8)]
        self.clock = SystemClock()
        self.opener = S3StoreOpener(S3Settings(max_pool_connections=CONCURRENCY))
        self.buckets = {u: server.bucket(self.names[u % 8]) for u in range(PEERS + 1)}
        self.me = Exchange(
            self.opener.open(self.buckets[0]),
            self.opener,
            self.clock,
            V,
            ExchangeSettings(grace_seconds=0),
        )
        self.expected = Expected(version=V, codec=COMP, shapes=SHAPES)
        self.compressed = [COMP.encode(grads(s)) for s in range(DISTINCT)]

    def payload(self, uid: int, window: int = W) -> bytes:
        meta = PayloadMeta(window=window, uid=uid, hotkey=f"hk{uid}", global_step=uid, version=V)
        return codec.encode(self.compressed[uid % DISTINCT], meta)

    def hostile(self, uid: int, kind: str) -> bytes:
        good = self.payload(uid)
        if kind == "garbage":
            return b"\x80\x04\x95garbage, or a pickle" * 50
        if kind == "oversized":
            return good + bytes(self.expected.size_limit())
        if kind == "replay":
            return self.payload(uid, window=W - 1)
        if kind == "non_finite":
            _, t = split(good)
            return rebuild(good, tensors={"val": torch.full_like(t["val"], float("nan"))})
        if kind == "truncated":
            return good[: len(good) // 3]
        return good  # late: a valid payload, uploaded after the window closed

    async def upload(self) -> TimeWindow:
        writer = S3StoreOpener(S3Settings(max_pool_connections=CONCURRENCY))
        gate = asyncio.Semaphore(CONCURRENCY)
        start = self.clock.now() - timedelta(seconds=1)

        async def put(uid: int, data: bytes) -> None:
            async with gate:
                await writer.open(self.buckets[uid]).put(
                    f"gradient-{W}-{uid}-v{V}.safetensors", data
                )

        try:
            await asyncio.gather(
                *(
                    put(u, self.payload(u) if kind_of(u) is None else self.hostile(u, kind_of(u)))
                    for u in range(1, PEERS + 1)
                    if kind_of(u) not in ("missing", "late")
                )
            )
            last = self.clock.now()
            # S3's Last-Modified has whole seconds: a stamp S counts while the window ends at
            # S + 1 or later, and late uploads must start in a later second.
            end = last.replace(microsecond=0) + timedelta(seconds=1)
            await asyncio.sleep(1.05 - last.microsecond / 1e6)
            await asyncio.gather(
                *(put(u, self.payload(u)) for u in range(1, PEERS + 1) if kind_of(u) == "late")
            )
        finally:
            writer.close()
        return TimeWindow(start=start, end=end)

    async def gather(self, tw: TimeWindow):
        return await gather(
            self.me,
            self.buckets,
            range(1, PEERS + 1),
            W,
            self.expected,
            time_window=tw,
            settings=GatherSettings(fetch=FetchSettings(concurrency=CONCURRENCY, timeout=60)),
        )

    def reference(self) -> dict[str, torch.Tensor]:
        honest = [u for u in range(1, PEERS + 1) if kind_of(u) is None]
        return mean_of(COMP, SHAPES, [self.compressed[u % DISTINCT] for u in honest])


def _check(result, want) -> None:
    honest = [u for u in range(1, PEERS + 1) if kind_of(u) is None]
    assert sorted(result.uids) == honest
    assert set(result.skipped) == {u for u in range(1, PEERS + 1) if kind_of(u) is not None}
    for uid, text in result.skipped.items():
        assert text.startswith(REASON[kind_of(uid)]), (uid, text)
    for name in SHAPES:
        torch.testing.assert_close(result.aggregate[name], want[name], rtol=1e-4, atol=1e-6)


async def test_256_peers_a_third_hostile_ten_windows_bounded_and_leak_free(
    seaweedfs: SeaweedServer,
) -> None:
    proc = psutil.Process()
    fds_before = proc.num_fds()
    load = Load(seaweedfs)
    try:
        tw = await load.upload()
        want = load.reference()
        payload_bytes = len(load.payload(1))
        dense_bytes = sum(torch.Size(s).numel() * 4 for s in SHAPES.values())

        _check(await load.gather(tw), want)  # window 1 warms clients, pools and workspaces
        base_fds, base_threads = proc.num_fds(), threading.active_count()
        base_tasks = len(asyncio.all_tasks())
        rss_after: list[int] = []
        peaks: list[int] = []
        fds: list[int] = []
        threads: list[int] = []
        for _ in range(9):
            with PeakRss() as rss:
                result = await load.gather(tw)
            _check(result, want)
            peaks.append(rss.growth)
            rss_after.append(proc.memory_info().rss)
            assert len(asyncio.all_tasks()) == base_tasks
            fds.append(proc.num_fds())
            threads.append(threading.active_count())

        bound = int(1.2 * (dense_bytes + CONCURRENCY * payload_bytes)) + ALLOWANCE
        held = sum(1 for u in range(1, PEERS + 1) if kind_of(u) is None) * payload_bytes
        assert held > 1.4 * bound  # the bound would catch a gather holding every payload
        assert max(peaks) <= bound, (peaks, bound)
        assert rss_after[-1] - rss_after[0] <= LEAK_TOLERANCE, rss_after
        # Connection pools and thread pools grow to their caps while warming, then stay.
        assert max(fds) <= base_fds + 2 * CONCURRENCY, (base_fds, fds)
        assert max(threads) <= base_threads + CONCURRENCY + 8, (base_threads, threads)
        assert threads[-1] <= threads[2] + 2, threads
    finally:
        await load.me.store.close()
        load.opener.close()
        for name in load.names:
            seaweedfs.delete_bucket(name)
    # Every descriptor the ten windows opened belonged to a pool and went with it.
    assert proc.num_fds() <= fds_before + 2, (fds_before, proc.num_fds())
