"""On a real S3 service (SeaweedFS on 127.0.0.1): reading the current peer list makes the same
requests with 10,000 old lists in the validator's bucket as with 10, counted both at the port
and as botocore API calls; a janitor pass then clears the old lists boundedly.

The 10,000 case takes about 36 s on this 2-core VM: 23 s writing the old lists (16 PUTs at a
time, the server sharing the cores); the rest is listing and the janitor's ten passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.storage.s3 import S3Store, S3StoreOpener
from core import keys
from core.janitor import sweep
from core.peers import PeerList, get_peer_list, post_peer_list
from core.retention import ALL_KINDS, RetentionPolicy
from tests.s3.server import SeaweedServer
from tests.s3.test_transfers import _spy
from tests.support.counting import CountingOpener
from tests.unit.test_peers import V, metagraph

WRITERS = 16


def listed(effective: int) -> PeerList:
    return PeerList(
        window=effective, first_effective_window=effective, peers=(2, 3), validator_uid=0,
        hotkey="hk0",
    )  # fmt: skip


@pytest.fixture
def fresh_bucket(seaweedfs: SeaweedServer) -> Iterator[str]:
    name = seaweedfs.create_bucket("growth")
    yield name
    seaweedfs.delete_bucket(name)


async def _legacy_lists(store: S3Store, old: int) -> None:
    """`old` lists as a release before pointers wrote them."""

    def put(w: int) -> None:
        # Straight through the client: the store's put also HEADs, which doubles the setup.
        store.client.put_object(Bucket=store.name, Key=keys.peers(w, V), Body=listed(w).to_json(V))

    with ThreadPoolExecutor(WRITERS) as pool:
        await asyncio.gather(*(asyncio.wrap_future(pool.submit(put, w)) for w in range(old)))


@pytest.mark.slow
@pytest.mark.parametrize("old", [10, 10_000])
async def test_reading_the_current_list_costs_the_same_on_s3(
    seaweedfs: SeaweedServer, fresh_bucket: str, opener: S3StoreOpener, old: int
) -> None:
    bucket = seaweedfs.bucket(fresh_bucket)
    writer = opener.open(bucket)  # holds the shared client open for the readers below
    calls = await _spy(writer)
    await _legacy_lists(writer, old)
    counted = CountingOpener(opener)
    calls.counts.clear()
    before = await get_peer_list(counted, metagraph(), {0: bucket}, old, V)
    assert before is not None and before.first_effective_window == old - 1
    # No pointer yet (its GET answers 404): a page per 1,000 lists, on every read.
    assert calls.counts == {"GetObject": 2, "ListObjectsV2": -(-old // 1000)}

    await post_peer_list(writer, listed(old), V)  # the first list of this release
    counted.counts.clear()
    calls.counts.clear()
    got = await get_peer_list(counted, metagraph(), {0: bucket}, old, V)
    assert got is not None and got.first_effective_window == old
    assert counted.counts == {"get": 2}
    assert calls.counts == {"GetObject": 2}  # the pointer and the list, nothing listed

    # The janitor, at most 1,000 deletes a pass, leaves the newest list and the pointer.
    policy = RetentionPolicy(max_deletes=1000, kinds=ALL_KINDS, version=V)
    passes = 0
    while (result := await sweep(writer, old + 10**6, policy)).more or result.count:
        passes += 1
        assert result.count <= 1000
    assert passes == -(-old // 1000)
    left = {m.key async for m in writer.list("")}
    assert left == {keys.peers(old, V), keys.peers_latest(V)}
    calls.counts.clear()
    assert await get_peer_list(counted, metagraph(), {0: bucket}, old + 10**6, V) == got
    assert calls.counts == {"GetObject": 2}
    await writer.close()
