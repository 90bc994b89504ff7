"""Exchange put/get: statuses, time windows, polling and deadlines on a fake clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import attrs
import pytest

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from core.exchange import Exchange, ExchangeSettings, Status
from core.keys import KeyKind
from core.windows import TimeWindow
from ports import Bucket

V = "1"
G = KeyKind.GRADIENT


def bucket(name: str, key: str = "w") -> Bucket:
    return Bucket(name=name, account_id="a", access_key_id=key, secret_access_key="s")


@pytest.fixture
def net():
    clock = FakeClock()
    opener = MemoryStoreOpener(clock, read_only_keys={"r"})
    me = Exchange(
        opener.open(bucket("me")),
        opener,
        clock,
        V,
        ExchangeSettings(poll_interval=1.0, grace_seconds=2.0, timestamp_resolution=0),
    )
    peer = Exchange(opener.open(bucket("peer")), opener, clock, V)
    return clock, me, peer


async def test_on_time_payload_is_ok(net) -> None:
    clock, me, peer = net
    tw = TimeWindow.after(clock.now(), 10)
    clock.advance(5)
    stamp = await peer.put(b"grad", 3, G, uid=7)
    got = await me.get(bucket("peer", "r"), 3, G, uid=7, time_window=tw)
    assert (got.status, got.payload, got.nbytes, got.uid) == (Status.OK, b"grad", 4, 7)
    assert got.meta.last_modified == stamp and got.ok


async def test_early_and_late_uploads_are_rejected_with_the_times(net) -> None:
    clock, me, peer = net
    await peer.put(b"early", 1, G, uid=1)
    clock.advance(1)
    tw = TimeWindow.after(clock.now(), 10)
    clock.advance(10)
    await peer.put(b"edge", 2, G, uid=2)  # exactly at time_max: on time
    clock.advance(0.001)
    await peer.put(b"late", 3, G, uid=3)
    results = [await me.get(bucket("peer"), w, G, uid=w, time_window=tw) for w in (1, 2, 3)]
    assert [r.status for r in results] == [Status.TOO_EARLY, Status.OK, Status.TOO_LATE]
    assert "uploaded" in results[0].reason and results[2].payload is None


async def test_polls_until_the_object_appears(net) -> None:
    clock, me, peer = net

    async def upload_later() -> None:
        while clock.monotonic() < 4.5:  # noqa: ASYNC110 - spins on the fake clock, no waiting
            await asyncio.sleep(0)
        await peer.put(b"late-ish", 9, G, uid=1)

    uploader = asyncio.create_task(upload_later())
    got = await me.get(bucket("peer"), 9, G, uid=1, timeout=30)
    await uploader
    assert got.status is Status.OK
    assert 4.5 <= clock.monotonic() <= 6.0  # found on the first poll after the upload


async def test_missing_payload_gives_up_at_the_deadline(net) -> None:
    clock, me, _ = net
    got = await me.get(bucket("peer"), 9, G, uid=1, timeout=7)
    assert got.status is Status.NOT_FOUND and "not found" in got.reason
    assert clock.monotonic() == pytest.approx(7)
    assert got.seconds == pytest.approx(7)


async def test_missing_payload_gives_up_after_time_max_plus_grace(net) -> None:
    clock, me, _ = net
    tw = TimeWindow.after(clock.now(), 3)
    got = await me.get(bucket("peer"), 9, G, uid=1, timeout=100, time_window=tw)
    assert got.status is Status.NOT_FOUND
    assert clock.now() - tw.end <= timedelta(seconds=3.0)  # grace 2 s + one poll


async def test_oversized_payloads_are_refused_before_download(net) -> None:
    _, me, peer = net
    await peer.put(b"x" * 100, 1, G, uid=1)
    got = await me.get(bucket("peer"), 1, G, uid=1, max_bytes=99)
    assert (got.status, got.reason.split(":")[0]) == (Status.INVALID, "too_large")
    assert (await me.get(bucket("peer"), 1, G, uid=1)).payload == b"x" * 100


async def test_background_puts_and_flush(net) -> None:
    _, me, peer = net
    task = peer.put_in_background(b"bg", 4, G, uid=2)
    await peer.flush()
    assert task.done()
    assert (await me.get(bucket("peer"), 4, G, uid=2)).payload == b"bg"


async def test_local_path_has_the_same_semantics(tmp_path) -> None:
    from adapters.storage.local import LocalStore

    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    ex = Exchange(
        opener.open(bucket("me")),
        opener,
        clock,
        V,
        local=LocalStore(tmp_path / "local", clock=clock),
    )
    tw = TimeWindow.after(clock.now(), 5)
    await ex.put_local(b"mine", 3, G, uid=0)
    got = await ex.get_local(3, G, uid=0, time_window=tw)
    assert got.status is Status.OK and got.payload == b"mine"
    agg = await ex.put_local(b"agg", 3, KeyKind.AGGREGATOR)
    assert agg == clock.now()
    with pytest.raises(RuntimeError):
        await Exchange(opener.open(bucket("me")), opener, clock, V).put_local(b"", 1, G, uid=1)


async def test_bad_requests_are_errors_not_exceptions(net) -> None:
    _, me, _ = net
    got = await me.get(bucket("peer"), 1, G, uid=None)
    assert got.status is Status.ERROR and "uid" in got.reason


@pytest.mark.parametrize(
    ("upload_after", "expected"),
    [
        (0.7, Status.TOO_EARLY),  # on time, but its stamp (second 10) is before the .5 opening
        (1.0, Status.OK),  # the first whole second inside the window
        (9.99, Status.OK),  # stamp 19: 19.0-19.99, the last whole second inside
        (10.0, Status.TOO_LATE),  # on time at 20.0, but stamp 20 may stand for 20.9
        (10.5, Status.TOO_LATE),
    ],
)
async def test_rounded_last_modified_counts_only_when_its_whole_second_is_inside(
    net, monkeypatch, upload_after, expected
) -> None:
    """S3 stamps an upload at 12:00:10.7 as 12:00:10; the window [10.5, 20.5] must not take a
    stamp that may stand for 10.0-10.5, nor one that may stand for 20.5-21.0."""
    clock, me, peer = net
    clock.set(clock.now().replace(microsecond=0) + timedelta(seconds=10))
    tw = TimeWindow.after(clock.now() + timedelta(seconds=0.5), 10)
    clock.advance(upload_after)
    await peer.put(b"grad", 3, G, uid=1)
    store_type = type(me.store)
    original = store_type.get

    async def floored(self, key, *, max_bytes=None):
        blob = await original(self, key, max_bytes=max_bytes)
        meta = attrs.evolve(blob.meta, last_modified=blob.meta.last_modified.replace(microsecond=0))
        return attrs.evolve(blob, meta=meta)

    monkeypatch.setattr(store_type, "get", floored)
    s3_like = Exchange(me.store, me.opener, clock, V, ExchangeSettings())  # 1 s resolution
    got = await s3_like.get(bucket("peer"), 3, G, uid=1, time_window=tw, timeout=0)
    assert got.status is expected, got.reason
