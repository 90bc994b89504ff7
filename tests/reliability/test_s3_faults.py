"""Faults of a real S3 server (SeaweedFS on 127.0.0.1): frozen, killed and restarted, behind
a proxy that resets or cuts connections; oversized objects refused on their headers.

Gather returns by its deadline (plus the engine's 0.5 s real-time slack) with reasons, never
an exception; nothing damaged is accepted; after the server returns, the next gather is whole.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import attrs
import pytest
import torch

from adapters.clock import SystemClock
from adapters.scratch import TempScratch
from adapters.storage.chaos import NO_FAULT, ChaosOpener, ChaosStore
from adapters.storage.s3 import S3Settings, S3StoreOpener
from core.checkpoints import Checkpointer, CheckpointSettings, load_checkpoint
from core.codec import Expected
from core.exchange import Exchange, ExchangeSettings
from core.fetch import FetchSettings
from core.gather import GatherSettings, gather
from core.windows import TimeWindow
from ports import Bucket, StorageError
from tests.reliability.conftest import FaultyProxy
from tests.reliability.support import COMP, SHAPES, V, W, encode, reference
from tests.s3.server import SeaweedServer
from tests.unit.checkpoint_helpers import assert_same, meta, state_of, step, trained

pytestmark = [pytest.mark.s3, pytest.mark.slow]

# Outages should surface in about a second, not after botocore's patient defaults.
FAST = S3Settings(max_pool_connections=16, max_attempts=2, connect_timeout=1.0, read_timeout=4.0)
SLACK = 0.5 + 1.0  # the engine's real-time slack, plus scheduling on a busy 2-core machine


def _restart(server: SeaweedServer) -> None:
    # On this thread, not a worker's: the server dies with the thread that started it
    # (PR_SET_PDEATHSIG), and asyncio's worker threads end with the test's event loop.
    server.start()


class S3Net:
    """Peers spread over a few buckets of `server`; a gathering neuron reads them."""

    def __init__(self, server: SeaweedServer, read_endpoint: str | None = None) -> None:
        self.server = server
        self.names = [server.create_bucket("rel") for _ in range(4)]
        self.clock = SystemClock()
        self.opener = S3StoreOpener(FAST)
        self.read_endpoint = read_endpoint
        self.me = Exchange(
            self.opener.open(server.bucket(self.names[0])),
            self.opener,
            self.clock,
            V,
            ExchangeSettings(grace_seconds=0),
        )
        self.started = self.clock.now() - timedelta(seconds=1)

    def bucket(self, uid: int, endpoint: str | None = None) -> Bucket:
        b = self.server.bucket(self.names[uid % len(self.names)])
        return attrs.evolve(b, endpoint=endpoint or b.endpoint)

    def buckets(self, uids) -> dict[int, Bucket]:
        return {u: self.bucket(u, self.read_endpoint) for u in uids}

    async def upload(self, uids, data=encode) -> None:
        writer = S3StoreOpener(FAST)
        try:
            for uid in uids:
                store = writer.open(self.bucket(uid))
                await store.put(f"gradient-{W}-{uid}-v{V}.safetensors", data(uid))
                await store.close()
        finally:
            writer.close()

    def time_window(self) -> TimeWindow:
        # Closing within a second: missing peers fail soon instead of polling to the deadline,
        # and an upload stamped in this very second (S3 stamps whole seconds) is inside.
        return TimeWindow(start=self.started, end=self.clock.now() + timedelta(seconds=1))

    async def gather(self, uids, timeout: float = 10.0, **kw):
        return await gather(
            self.me,
            self.buckets(uids),
            uids,
            W,
            _expected(),
            time_window=self.time_window(),
            settings=GatherSettings(fetch=FetchSettings(concurrency=8, timeout=timeout)),
            **kw,
        )

    async def close(self) -> None:
        await self.me.store.close()
        self.opener.close()


def _expected() -> Expected:
    return Expected(version=V, codec=COMP, shapes=SHAPES)


def _exact(result, uids) -> None:
    assert sorted(result.uids) == sorted(uids), result.skipped
    want = reference(sorted(uids))
    for name in SHAPES:
        torch.testing.assert_close(result.aggregate[name], want[name], rtol=1e-5, atol=1e-7)


async def test_frozen_server_gather_returns_by_its_deadline_then_recovers(
    private_server: SeaweedServer,
) -> None:
    net = S3Net(private_server)
    uids = list(range(1, 9))
    try:
        await net.upload(uids)
        os.kill(private_server._proc.pid, signal.SIGSTOP)  # accepts connections, never answers
        try:
            began = time.monotonic()
            result = await net.gather(uids, timeout=2.0)
            took = time.monotonic() - began
        finally:
            os.kill(private_server._proc.pid, signal.SIGCONT)
        assert took <= 2.0 + SLACK, took
        assert result.uids == () and set(result.skipped) == set(uids)
        assert all(r.startswith("error: timeout") for r in result.skipped.values()), result.skipped
        _exact(await net.gather(uids), uids)
    finally:
        await net.close()


async def test_server_killed_mid_gather_then_restarted(private_server: SeaweedServer) -> None:
    net = S3Net(private_server)
    uids = list(range(1, 41))
    try:
        await net.upload(uids)
        gets = 0

        def kill_on_the_tenth_get(bucket: str, op: str, key: str):
            nonlocal gets
            gets += op == "get"
            if gets == 10 and private_server.running:
                private_server.stop()  # SIGKILL, as a crash
            return NO_FAULT

        net.me.opener = ChaosOpener(net.opener, net.clock, kill_on_the_tenth_get)
        began = time.monotonic()
        result = await net.gather(uids, timeout=8.0)
        assert time.monotonic() - began <= 8.0 + SLACK
        assert not private_server.running
        assert 1 <= len(result.uids) < len(uids)
        assert all(
            r.startswith(("error: transient", "error: timeout")) for r in result.skipped.values()
        ), result.skipped
        _exact(result, result.uids)  # what did arrive was whole

        _restart(private_server)
        net.me.opener = net.opener
        _exact(await net.gather(uids), uids)
    finally:
        if not private_server.running:
            _restart(private_server)
        await net.close()


async def test_server_killed_mid_checkpoint_save_leaves_the_previous_one_loadable(
    private_server: SeaweedServer, tmp_path
) -> None:
    name = private_server.create_bucket("ckpt")
    opener = S3StoreOpener(FAST)
    s3 = opener.open(private_server.bucket(name))
    puts = 0

    def kill_on_the_fourth_upload(op: str, key: str):
        nonlocal puts
        if op in ("put", "put_file") and "/6-1/" in key:
            puts += 1
            if puts == 4 and private_server.running:
                private_server.stop()
        return NO_FAULT

    store = ChaosStore(s3, SystemClock(), kill_on_the_fourth_upload)
    scratch = TempScratch(tmp_path / "scratch")
    cfg = CheckpointSettings(version="1.0.0", shard_bytes=1500, upload_concurrency=1)
    saver = Checkpointer(store, scratch, SystemClock(), cfg)
    try:
        model, opt, sched, mom = trained()
        await saver.save(state_of(model, opt, sched, mom), meta(5))
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        step(model, opt, sched, mom)
        with pytest.raises(StorageError):
            await saver.save(state_of(model, opt, sched, mom), meta(6))
        assert not private_server.running

        _restart(private_server)
        loaded = await load_checkpoint(store, cfg)
        assert loaded.window == 5 and not loaded.fell_back  # window 6 never got a manifest
        assert_same(saved, dict(loaded.state.model))

        await saver.save(state_of(model, opt, sched, mom), meta(6))  # the next run completes
        loaded = await load_checkpoint(store, cfg)
        assert loaded.window == 6
        assert_same(dict(model.state_dict()), dict(loaded.state.model))
    finally:
        if not private_server.running:
            _restart(private_server)
        await s3.close()
        opener.close()
        scratch.close()


async def test_oversized_object_is_refused_on_its_headers(private_server: SeaweedServer) -> None:
    net = S3Net(private_server)
    try:
        await net.upload([1, 2, 3])
        await net.upload([4], data=lambda uid: os.urandom(4 << 20))
        probe = net.opener.open(net.bucket(4))
        await probe.head("warm-up")  # builds the shared client so we can watch its bodies
        bodies = []
        probe.client.meta.events.register(
            "after-call.s3.GetObject", lambda parsed, **_: bodies.append(parsed.get("Body"))
        )
        result = await net.gather([1, 2, 3, 4])
        _exact(result, [1, 2, 3])
        assert result.skipped[4].startswith("invalid: too_large")
        big = [b for b in bodies if b is not None and b._content_length == str(4 << 20)]
        assert big and all(b._amount_read == 0 for b in big)  # not one body byte was read
        await probe.close()
    finally:
        await net.close()


@pytest.mark.parametrize("mode", ["reset", "truncate"])
async def test_reset_and_cut_connections_are_transient_skips(
    private_server: SeaweedServer, proxy: FaultyProxy, mode: str
) -> None:
    net = S3Net(private_server, read_endpoint=proxy.endpoint)
    uids = list(range(1, 7))
    try:
        await net.upload(uids)
        proxy.mode, proxy.cut_after = mode, 600  # past the headers, inside the 876-byte body
        result = await net.gather(uids, timeout=6.0)
        assert result.uids == () and set(result.skipped) == set(uids)
        reasons = result.skipped.values()
        assert all(r.startswith("error: transient") for r in reasons), result.skipped
        proxy.mode = "pass"
        _exact(await net.gather(uids), uids)
    finally:
        await net.close()
