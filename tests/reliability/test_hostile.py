"""Hostile peers: every malicious payload is a skipped peer with its reason, never a crash.

One gather meets all of them at once, beside honest peers whose aggregate must come out
exactly as if the attackers had not been there.
"""

from __future__ import annotations

import contextlib
import pickle
import struct
import sys
from pathlib import Path

import pytest
import torch

from adapters.chain.fake import FakeNetwork
from adapters.clock import FakeClock
from adapters.signing import HmacSigner, HmacVerifier
from adapters.storage.memory import MemoryStoreOpener
from core import codec
from core.codec import Expected, PayloadMeta
from core.compression import TopKCompressor, TopKParams
from core.decoding import Synchronous
from core.exchange import Status
from core.fetch import FetchSettings
from core.gather import gather, stream
from core.peers import PeerList, get_peer_list, post_peer_list
from core.windows import TimeWindow
from ports import Bucket
from tests.reliability.support import (
    COMP,
    SHAPES,
    Net,
    V,
    W,
    encode,
    grads,
    pickle_bomb,
    rebuild,
    reference,
    split,
    torch_save_bomb,
)

HONEST = (1, 2, 3, 4)


def _hostile(marker: Path) -> dict[int, tuple[bytes | None, str, set[str]]]:
    """uid -> (bytes at its key, or None: nothing there; status; accepted reason slugs)."""
    good = encode(20)
    _, t = split(good)
    nan_lookup = t["lookup"].clone()
    nan_lookup[0, 1] = float("nan")
    inf_shift = t["shift"].clone()
    inf_shift[-1] = float("inf")
    other_codec = TopKCompressor(TopKParams(target_chunk=16, topk=4))
    size_limit = Expected(version=V, codec=COMP, shapes=SHAPES).size_limit()
    nested = b"[" * 5000 + b"]" * 5000
    transposed = '[["l1.bias",[48]],["l1.weight",[48,32]],["l2.weight",[48,16]]]'
    return {
        20: (pickle_bomb(str(marker)), "invalid", {"header_too_large", "bad_header"}),
        21: (torch_save_bomb(str(marker)), "invalid", {"header_too_large", "bad_header"}),
        22: (good + b"\0" * size_limit, "invalid", {"too_large"}),
        23: (struct.pack("<Q", 1 << 40) + b"{}", "invalid", {"header_too_large"}),
        24: (struct.pack("<Q", len(nested)) + nested, "invalid", {"too_deep"}),
        25: (rebuild(encode(25), tensors={"shift": t["shift"].double()}), "invalid", {"bad_dtype"}),
        26: (rebuild(encode(26), tensors={"idx": t["idx"][:-3]}), "invalid", {"bad_shape"}),
        27: (rebuild(encode(27), meta={"params": transposed}), "invalid", {"bad_shape"}),
        # an Elias-Fano stream of all ones or all zeros: no chunk holds k entries
        28: (
            rebuild(encode(28), tensors={"idx": torch.full_like(t["idx"], 0xFF)}),
            "invalid",
            {"index_count_mismatch"},
        ),
        29: (
            rebuild(encode(29), tensors={"idx": torch.zeros_like(t["idx"])}),
            "invalid",
            {"index_count_mismatch"},
        ),
        30: (rebuild(encode(30), tensors={"lookup": nan_lookup}), "invalid", {"non_finite"}),
        31: (rebuild(encode(31), tensors={"shift": inf_shift}), "invalid", {"non_finite"}),
        32: (encode(32, scale=float("nan")), "invalid", {"non_finite"}),
        33: (encode(33, scale=float("inf")), "invalid", {"non_finite"}),
        34: (encode(34, comp=other_codec), "invalid", {"codec_mismatch"}),
        35: (encode(35, window=W - 1), "invalid", {"window_mismatch"}),  # replay of an old window
        36: (encode(2), "invalid", {"uid_mismatch"}),  # honest uid 2's payload passed off
        37: (None, "not_found", {"not_found"}),  # it wrote to uid 38's key name instead
        38: (encode(38, window=W, step=1), "ok", set()),  # its real payload, untouched
        39: (b"", "invalid", {"bad_header"}),
        40: (rebuild(encode(40), meta={"version": "0"}), "invalid", {"version_mismatch"}),
        41: (rebuild(encode(41), meta={"schema": "evil"}), "invalid", {"schema_mismatch"}),
        42: (rebuild(encode(42), meta={"window": f"0{W}"}), "invalid", {"bad_metadata"}),
        43: (rebuild(encode(43), meta={"hotkey": "h" * 500}), "invalid", {"bad_metadata"}),
        44: (
            rebuild(encode(44), tensors={"evil": torch.zeros(1)}),
            "invalid",
            {"unknown_tensor"},
        ),
        45: (good[: len(good) // 2], "invalid", {"bad_header"}),  # cut short
        46: (rebuild(encode(46), meta={"codec": nested.decode()}), "invalid", {"too_deep"}),
        47: (rebuild(encode(47), meta={"params": nested.decode()}), "invalid", {"too_deep"}),
    }


def _patch_unpickling(monkeypatch) -> None:
    def forbidding(original):
        def forbidden(*args, **kwargs):
            # numba reads the index of its cache of our own compiled kernels with pickle the
            # first time a kernel runs in a process: that file is ours, not a peer's.
            if "numba" in sys._getframe(1).f_code.co_filename:
                return original(*args, **kwargs)
            raise AssertionError("something tried to unpickle a peer's payload")

        return forbidden

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidding(getattr(pickle, name)))
    monkeypatch.setattr(torch, "load", forbidding(torch.load))


async def test_every_hostile_payload_is_skipped_with_its_reason(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    cases = _hostile(marker)
    assert not marker.exists()
    net = Net()
    for uid in HONEST:
        await net.upload(uid, encode(uid))
    for uid, (data, _, _) in cases.items():
        if data is not None:
            await net.upload(uid, data)
    # uid 37 uploads a payload for uid 38 under uid 38's key, in its own bucket: nobody reads it
    await net.upload(37, encode(38), key_uid=38)
    _patch_unpickling(monkeypatch)
    uids = [*HONEST, *cases]

    result = await net.gather(uids)

    assert not marker.exists()  # no payload ran code
    assert sorted(result.uids) == sorted([*HONEST, 38]), result.skipped
    for uid, (_, status, reasons) in cases.items():
        if status == "ok":
            continue
        text = result.skipped[uid]
        head, slug = [*text.split(": "), ""][:2]
        assert head == status, (uid, text)
        assert status == "not_found" or slug in reasons, (uid, text)
    honest = reference([*HONEST, 38])
    for name in SHAPES:
        torch.testing.assert_close(result.aggregate[name], honest[name], rtol=1e-6, atol=1e-7)
    assert result.success_rate == pytest.approx(5 / len(uids))

    # The validator's path (peer by peer) meets the same payloads and raises nothing either.
    async with contextlib.aclosing(
        stream(
            net.me,
            net.buckets,
            uids,
            W,
            net.expected,
            settings=FetchSettings(timeout=5),
            runner=Synchronous(),
        )
    ) as items:
        seen = {f.uid: f.status async for f in items}
    assert {u for u, s in seen.items() if s is Status.OK} == {*HONEST, 38}
    assert not marker.exists()


async def test_oversized_objects_are_refused_before_download() -> None:
    net = Net()
    reads: list[int] = []

    class Spy:
        """A store that records how many body bytes it hands out."""

        def __init__(self, inner) -> None:
            self.inner = inner
            self.name = inner.name

        async def get(self, key, *, max_bytes=None):
            blob = await self.inner.get(key, max_bytes=max_bytes)
            reads.append(len(blob.data))
            return blob

    opener = net.me.opener
    net.me.opener = type("O", (), {"open": lambda self, b: Spy(opener.open(b))})()
    await net.upload(5, b"\0" * (64 * 1024 * 1024 + 1))  # over the hard cap too
    await net.upload(6, encode(6) + b"\0" * net.expected.size_limit())
    result = await net.gather([5, 6])
    assert {u: r.split(": ")[1] for u, r in result.skipped.items()} == {
        5: "too_large",
        6: "too_large",
    }
    assert reads == [] and result.download_bytes == 0


async def test_signed_network_refuses_forgeries_relabelled_copies_and_unsigned() -> None:
    keys = {f"hk{u}": f"key-{u}".encode() for u in range(1, 10)}
    net = Net()
    net.expected = Expected(
        version=V, codec=COMP, shapes=SHAPES, require_signature=True, hotkey="set-per-uid"
    )
    hotkeys = {u: f"hk{u}" for u in range(1, 10)}
    await net.upload(1, encode(1, signer=HmacSigner(keys["hk1"])))
    await net.upload(2, encode(2))  # unsigned
    await net.upload(3, encode(3, signer=HmacSigner(b"guessed")))  # forged
    stolen = encode(1, signer=HmacSigner(keys["hk1"]))
    await net.upload(4, rebuild(stolen, meta={"uid": "4", "hotkey": "hk4"}))  # relabelled copy
    await net.upload(5, stolen)  # verbatim copy under its own key
    result = await net.gather(range(1, 6), hotkeys=hotkeys, verifier=HmacVerifier(keys))
    assert result.uids == (1,)
    assert {u: r.split(": ")[1] for u, r in result.skipped.items()} == {
        2: "unsigned",
        3: "bad_signature",
        4: "bad_signature",
        5: "uid_mismatch",
    }


async def test_replayed_object_from_an_older_window_is_too_early() -> None:
    """A peer copies last window's object (old last_modified) to this window's key name."""
    net = Net()
    old = encode(7)  # even with this window's number inside, its upload time gives it away
    await net.upload(7, old)
    net.clock.advance(60)
    tw = TimeWindow.after(net.clock.now(), 30)
    await net.upload(8, encode(8))
    result = await net.gather([7, 8], time_window=tw)
    assert result.uids == (8,) and result.skipped[7].startswith("too_early")


async def test_malformed_chain_commitments_never_reach_gather(caplog) -> None:
    clock = FakeClock()
    network = FakeNetwork.in_memory(clock)
    good = "a" * 32 + "k" * 32 + "s" * 64
    raw = {
        "honest": good,
        "short": good[:-1],
        "long": good + "x",
        "evil-host": "evil.com/" + "a" * 23 + "k" * 32 + "s" * 64,  # not a DNS label
        "spaces": "a" * 32 + " " * 32 + "s" * 64,
        "unicode": "a" * 32 + "k" * 32 + "\u00e9" * 64,
        "empty": "",
        "nul": "a" * 32 + "\0" * 32 + "s" * 64,
    }
    uids = {hk: network.register(hk) for hk in raw}
    for hk, text in raw.items():
        network.write_raw_commitment(hk, text)
    commitments = await network.chain("honest").bucket_commitments()
    assert set(commitments) == {uids["honest"]}
    skipped_logs = [
        r.getMessage() for r in caplog.records if "commitment skipped" in r.getMessage()
    ]
    assert len(skipped_logs) == len(raw) - 1
    assert all("s" * 64 not in m and "evil.com" not in m for m in skipped_logs)

    net = Net()
    honest = uids["honest"]
    await net.base.open(commitments[honest]).put(
        f"gradient-{W}-{honest}-v{V}.safetensors", encode(honest)
    )
    result = await gather(net.me, commitments, uids.values(), W, net.expected, runner=Synchronous())
    assert result.uids == (honest,)
    assert {u: r.split(":")[0] for u, r in result.skipped.items()} == {
        uid: "error" for hk, uid in uids.items() if hk != "honest"
    }
    assert all("no_bucket" in r for r in result.skipped.values())


async def test_peer_lists_naming_unknown_uids_are_trimmed(caplog) -> None:
    clock = FakeClock()
    network = FakeNetwork.in_memory(clock)
    vali = network.register("vali", stake=100.0, validator_permit=True)
    miners = [network.register(f"m{i}") for i in range(3)]
    opener = MemoryStoreOpener(clock)
    vbucket = Bucket(name="vali-bucket", account_id="a", access_key_id="k", secret_access_key="s")
    listed = PeerList(
        window=W - 2,
        first_effective_window=W,
        peers=[*miners, 999, 5000],
        reserves=[77],
        validator_uid=vali,
        hotkey="vali",
    )
    await post_peer_list(opener.open(vbucket), listed, V)
    metagraph = await network.chain("vali").metagraph()
    got = await get_peer_list(opener, metagraph, {vali: vbucket}, W, V)
    assert got is not None and got.peers == tuple(miners) and got.reserves == ()
    assert any("unknown uids" in r.getMessage() for r in caplog.records)

    # Had the unknown uids reached gather untrimmed, they would only have been skipped peers.
    net = Net()
    for uid in miners:
        await net.upload(uid, encode(uid))
    net.buckets = {u: net.buckets[u] for u in miners}
    result = await net.gather([*listed.peers, *listed.reserves])
    assert sorted(result.uids) == miners
    assert set(result.skipped) == {999, 5000, 77}
    assert all(r.startswith("error: no_bucket") for r in result.skipped.values())


async def test_a_diverged_miner_encodes_its_nan_gradient_and_receivers_reject_it() -> None:
    """Found by this suite: quantising a NaN gradient raised IndexError in the miner."""
    net = Net()
    for uid, scale in ((1, 1.0), (2, float("nan")), (3, float("inf")), (4, -float("inf"))):
        await net.upload(uid, encode(uid, scale=scale))
    g = {n: t.clone() for n, t in grads(5).items()}
    g["l1.bias"][3] = float("nan")  # one bad entry is enough
    await net.upload(
        5,
        codec.encode(
            COMP.encode(g), PayloadMeta(window=W, uid=5, hotkey="hk5", global_step=0, version=V)
        ),
    )
    result = await net.gather(range(1, 6))
    assert result.uids == (1,)
    assert {u: r.split(": ")[1] for u, r in result.skipped.items()} == {
        u: "non_finite" for u in (2, 3, 4, 5)
    }


@pytest.mark.parametrize("spelling", [str.upper, lambda h: h[:2] + " " + h[2:]])
async def test_a_respelled_signature_is_not_authentic(spelling) -> None:
    """Found by this suite: a bit flip turning a hex letter uppercase kept the signature valid."""
    keys = {"hk1": b"key-1"}
    net = Net()
    net.expected = Expected(
        version=V, codec=COMP, shapes=SHAPES, require_signature=True, hotkey="set-per-uid"
    )
    signed = encode(1, signer=HmacSigner(keys["hk1"]))
    metadata, _ = split(signed)
    await net.upload(1, rebuild(signed, meta={"signature": spelling(metadata["signature"])}))
    result = await net.gather([1], hotkeys={1: "hk1"}, verifier=HmacVerifier(keys))
    assert result.uids == () and result.skipped[1].startswith("invalid: bad_signature")


async def test_a_bucket_the_opener_refuses_is_a_skip_not_an_exception() -> None:
    """The opener may refuse a bucket from the chain (an endpoint boto3 cannot parse)."""
    net = Net()
    base = net.me.opener

    class Refusing:
        def open(self, b):
            if b.name == "peer-2":
                raise ValueError("Invalid endpoint: not a URL")
            return base.open(b)

    net.me.opener = Refusing()
    for uid in (1, 2, 3):
        await net.upload(uid, encode(uid))
    result = await net.gather([1, 2, 3])
    assert sorted(result.uids) == [1, 3]
    assert result.skipped[2].startswith("error: bad_bucket: ValueError")


def test_an_account_id_that_is_not_one_dns_label_is_refused_by_the_bucket_itself() -> None:
    """`evil.com/#` would make R2's endpoint https://evil.com/#.r2.cloudflarestorage.com."""
    for hostile in ("evil.com/#", "a.b", "x" * 64, "", "-a", "a-", "a b", "ä"):
        with pytest.raises(ValueError) as raised:
            Bucket(name="b", account_id=hostile, access_key_id="k", secret_access_key="s")
        assert hostile not in str(raised.value) or hostile == ""
    ok = Bucket(name="b", account_id="0123abcd" * 4, access_key_id="k", secret_access_key="s")
    assert ok.endpoint_url == f"https://{'0123abcd' * 4}.r2.cloudflarestorage.com"
