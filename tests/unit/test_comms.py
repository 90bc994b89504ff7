"""The Comms facade: every operation of the seed, under Templar's names, on in-memory fakes.

Comms only hands over to the services; these tests show each call reaching its service with
this node's bucket, version and profile (the services' own tests cover what they do).
"""

from __future__ import annotations

import pytest
import torch

from adapters.chain.fake import FakeNetwork
from adapters.clock import FakeClock
from adapters.scratch import TempScratch
from adapters.storage.memory import MemoryStoreOpener
from core import codec
from core.checkpoints import Checkpointer, CheckpointMeta, CheckpointSettings, CheckpointState
from core.codec import Expected, PayloadMeta
from core.comms import Comms
from core.compression import topk_only_compressor
from core.exchange import Exchange
from core.keys import KeyKind
from core.peers import ActivityTracker, PeerList, PeerSettings
from core.profiles import NATIVE, TEMPLAR
from ports import Bucket

V = "1.0.0"
SHAPES = {"w": (8, 16), "b": (16,)}
COMP = topk_only_compressor(target_chunk=4, topk=3)


def bucket(name: str) -> Bucket:
    """A bucket whose commitment the chain takes (32-character ids, a 64-character secret)."""
    account = name.encode().hex().ljust(32, "0")[:32]
    return Bucket(
        name=account, account_id=account, access_key_id="k" * 32, secret_access_key="s" * 64
    )


class Node:
    def __init__(self, net: Net, hotkey: str, profile, tmp_path) -> None:
        self.bucket = bucket(hotkey)
        self.comms = Comms(
            exchange=Exchange(
                net.opener.open(self.bucket), net.opener, net.clock, V, scheme=profile.keys
            ),
            chain=net.network.chain(hotkey),
            hotkey=hotkey,
            profile=profile,
            tracker=ActivityTracker(net.opener, net.clock, PeerSettings(), V, scheme=profile.keys),
            checkpointer=Checkpointer(
                net.opener.open(self.bucket),
                TempScratch(tmp_path / hotkey),
                net.clock,
                net.checkpoints,
            ),
            checkpoint_settings=net.checkpoints,
        )


class Net:
    def __init__(self, tmp_path, profile) -> None:
        self.clock = FakeClock()
        self.network = FakeNetwork.in_memory(self.clock, block_time=1.0)
        self.opener = MemoryStoreOpener(self.clock)
        self.checkpoints = CheckpointSettings(version=V)
        self.network.register("val", stake=100.0, validator_permit=True)
        self.network.register("m1")
        self.network.register("m2")
        self.val = Node(self, "val", profile, tmp_path)
        self.miners = [Node(self, "m1", profile, tmp_path), Node(self, "m2", profile, tmp_path)]


def gradient(uid: int, window: int) -> bytes:
    g = torch.Generator().manual_seed(uid)
    grads = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    meta = PayloadMeta(window=window, uid=uid, hotkey=f"m{uid}", global_step=0, version=V)
    return codec.encode(COMP.encode(grads), meta)


@pytest.mark.parametrize("profile", [NATIVE, TEMPLAR], ids=lambda p: p.name)
async def test_every_operation_through_comms(tmp_path, profile) -> None:
    net = Net(tmp_path, profile)
    for node in (net.val, *net.miners):
        assert await node.comms.try_commit(node.bucket)
        assert not await node.comms.try_commit(node.bucket)  # already on chain
    commitments = await net.val.comms.chain.bucket_commitments()
    assert set(commitments) == {0, 1, 2}

    # put / get / gather
    window = 3
    for uid, node in enumerate(net.miners, start=1):
        await node.comms.put(gradient(uid, window), window, KeyKind.GRADIENT, uid)
    expected = Expected(version=V, codec=COMP, shapes=SHAPES, window=window)
    got = await net.val.comms.get(
        commitments[1],
        window,
        KeyKind.GRADIENT,
        lambda _uid, data: codec.decode(data, expected),
        uid=1,
    )
    assert got.ok and got.payload.meta.uid == 1
    result = await net.val.comms.gather(commitments, [1, 2], window, expected)
    assert sorted(result.uids) == [1, 2] and result.aggregate is not None

    # activity
    assert await net.val.comms.track_active_peers(window) == frozenset({1, 2})
    assert await net.val.comms.update_peers_with_buckets(window) == []
    assert set(net.val.comms.tracker.eval_peers) == {1, 2}

    # peer list and start window, in the profile's names and bodies
    peer_list = PeerList(
        window=window, first_effective_window=window + 1, peers=(1, 2), validator_uid=0,
        hotkey="val",
    )  # fmt: skip
    await net.val.comms.post_peer_list(peer_list)
    listed = await net.miners[0].comms.get_peer_list(window + 1)
    assert listed is not None and listed.peers == (1, 2)
    stored = [m.key async for m in net.val.comms.exchange.store.list("")]
    assert profile.keys.peers(window + 1, V) in stored
    await net.val.comms.post_start_window(2)
    assert await net.miners[1].comms.get_start_window() == 2
    assert profile.keys.start_window(V) in [
        m.key async for m in net.val.comms.exchange.store.list("")
    ]

    # checkpoints: save, find the newest, load it
    model = torch.nn.Linear(4, 2)
    meta = CheckpointMeta(window=window, global_step=1, uid=0, hotkey="val")
    await net.val.comms.save_checkpoint(CheckpointState(model=model.state_dict()), meta)
    latest = await net.miners[0].comms.get_latest_checkpoint(current_window=window)
    assert latest is not None
    loaded = await net.miners[0].comms.load_checkpoint(current_window=window)
    assert loaded.window == window and loaded.global_step == 1
    assert torch.equal(loaded.state.model["weight"], model.weight.detach())


async def test_local_put_and_get_use_the_local_store(tmp_path) -> None:
    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    local = opener.open(bucket("local"))
    comms = Comms(
        exchange=Exchange(opener.open(bucket("mine")), opener, clock, V, local=local),
        chain=FakeNetwork.in_memory(clock).chain("x"),
        hotkey="x",
    )
    await comms.put(b"mine", 5, KeyKind.GRADIENT, 1, local=True)
    assert [m.key async for m in opener.open(bucket("mine")).list("")] == []
    got = await comms.get(bucket("mine"), 5, KeyKind.GRADIENT, local=True, uid=1)
    assert got.ok and got.payload == b"mine"


async def test_operations_without_their_service_say_so(tmp_path) -> None:
    clock = FakeClock()
    opener = MemoryStoreOpener(clock)
    comms = Comms(
        exchange=Exchange(opener.open(bucket("mine")), opener, clock, V),
        chain=FakeNetwork.in_memory(clock).chain("x"),
        hotkey="x",
    )
    with pytest.raises(RuntimeError, match="activity tracker"):
        await comms.track_active_peers(1)
    with pytest.raises(RuntimeError, match="checkpointer"):
        await comms.save_checkpoint(CheckpointState(model={}), CheckpointMeta(1, 1, 1))
