"""A network of our neurons in the templar profile, on in-memory fakes and a FakeClock:
Templar's names and coordination bodies in the buckets, and gradients judged by Templar's
time window (from the first block of the next window)."""

from __future__ import annotations

import io
from datetime import timedelta

import attrs
import torch

from core.keys import KeyKind
from core.profiles import TEMPLAR
from core.templar.coordination import TEMPLAR as TEMPLAR_BODIES
from core.windows import first_block
from tests.unit.test_neurons import Net


class TemplarNet(Net):
    def make(self, kind, hotkey, aggregator=False, **extra):
        return super().make(kind, hotkey, aggregator, profile=TEMPLAR, **extra)


async def test_a_templar_profile_network_trains_on_templars_names_and_time_windows(tmp_path):
    net = TemplarNet(tmp_path)
    assert await net.run(5) == [5, 5, 5, 5]
    rows = net.validator_rows()
    assert all(r["success_rate"] == 1.0 and not r["skipped"] for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]

    version, bpw = net.hparams.version, net.hparams.blocks_per_window
    delta = timedelta(seconds=net.hparams.time_window_delta_seconds)
    chain = net.validator.chain
    miner = net.miners[0]
    store = net.opener.open(miner.buckets.gradients_write)
    gradients = [m async for m in store.list("gradient-")]
    assert gradients
    for meta in gradients:
        parsed = TEMPLAR.keys.parse(meta.key)
        assert parsed is not None and parsed.kind is KeyKind.GRADIENT
        assert meta.key.endswith(f"-{miner.uid}-v{version}.pt")
        # Uploaded once window w was over: inside [t(first block of w + 1), + delta].
        opens = await chain.block_timestamp(first_block(parsed.window + 1, bpw))
        assert opens <= meta.last_modified <= opens + delta

    # The gradients are Templar's payloads: what Templar's loader reads (torch.load with
    # weights_only, run here on our own output), with its keys, and what our reader decodes.
    data = (await store.get(gradients[-1].key)).data
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    assert set(loaded) == {"state_dict", "global_step"}
    names = set(loaded["state_dict"])
    assert {f"{n}{s}" for n in miner.shapes for s in ("idxs", "vals")} <= names
    assert "metadata" in names
    window = TEMPLAR.keys.parse(gradients[-1].key).window
    expected = attrs.evolve(miner.expected, window=window)
    decoded = TEMPLAR.payloads.decode(data, expected, verifier=None, on_loop=False)
    assert decoded.meta.window == window

    vstore = net.opener.open(net.validator.buckets.gradients_write)
    names = [m.key async for m in vstore.list("")]
    assert f"start_window_v{version}.json" in names
    lists = sorted((TEMPLAR.keys.parse(n).window, n) for n in names if n.startswith("peers_"))
    assert lists and not any(n.startswith("peers-") for n in names)  # no pointer, no native
    decoded = [
        TEMPLAR_BODIES.decode_peer_list((await vstore.get(n)).data, version, 0, "val")
        for _, n in lists
    ]
    assert set(decoded[-1].peers) == {m.uid for m in net.miners}
    # Templar's flag: the validator's first selection, and only that one, says so.
    assert [d.initial_selection for d in decoded] == [True] + [False] * (len(decoded) - 1)


async def test_the_templar_time_window_opens_at_the_next_windows_first_block(tmp_path):
    net = TemplarNet(tmp_path, miners=1)
    neuron, chain, bpw = net.miners[0], net.miners[0].chain, net.hparams.blocks_per_window
    window = await neuron.current_window()
    tw = await neuron.time_window(window)  # waits for the block that opens it
    assert await neuron.current_window() == window + 1
    assert tw.start == await chain.block_timestamp(first_block(window + 1, bpw))
    assert tw.end - tw.start == timedelta(seconds=net.hparams.time_window_delta_seconds)
