"""Miner and validator windows on in-memory fakes and a FakeClock: no sleeping, no network."""

from __future__ import annotations

import asyncio

import attrs
import pytest

from adapters.chain.fake import FakeNetwork
from adapters.clock import FakeClock
from adapters.scratch import TempScratch
from adapters.signing import DevKeyVerifier, dev_signer
from adapters.storage.chaos import ChaosOpener, Fault
from adapters.storage.memory import MemoryStoreOpener
from core import codec, keys
from core.clock_skew import NetworkClock
from core.codec import Expected
from core.compression import DenseCompressor
from core.decoding import Synchronous
from core.peers import get_peer_list
from neurons.buckets import local_buckets
from neurons.config import NeuronSettings, hparams_from_mapping
from neurons.localnet import localnet_hparams
from neurons.miner import Miner
from neurons.validator import Validator, relative_improvement

HP = hparams_from_mapping(localnet_hparams(0.5))


class Net:
    def __init__(self, tmp_path, miners=3, faulty="", hparams=HP, scratch=False):
        self.hparams = hparams
        self.scratch = TempScratch(tmp_path / "scratch") if scratch else None
        self.clock = FakeClock()
        self.network = FakeNetwork.in_memory(self.clock, block_time=0.5)
        self.opener = MemoryStoreOpener(self.clock)
        self.settings = NeuronSettings(
            storage="memory", chain="memory", block_poll_interval=0.1, state_dir=str(tmp_path)
        )
        self.rows: list[dict] = []
        self.network.register("val", stake=100.0, validator_permit=True)
        self.validator = self.make(Validator, "val", aggregator=True)
        self.miners = []
        for i in range(miners):
            self.network.register(f"m{i}")
            self.miners.append(self.make(Miner, f"m{i}"))
        if faulty:
            self.network.register("bad")
            settings = self.settings
            self.settings = NeuronSettings(**{**settings.__getstate__(), "faulty": faulty})
            # Reading a peer's payload takes time, as it does over a network: on a clock
            # that moves only for sleepers a copy would otherwise carry its original's time.
            slow = ChaosOpener(self.opener, self.clock, lambda b, op, k: Fault(latency=0.05))
            self.miners.append(self.make(Miner, "bad", opener=slow))
            self.settings = settings

    def make(self, kind, hotkey, aggregator=False, **extra):
        extra = {
            "signer": dev_signer(hotkey),
            "verifier": DevKeyVerifier(),
            "opener": self.opener,
            **extra,
        }
        return kind(
            self.hparams,
            self.settings,
            chain=self.network.chain(hotkey),
            clock=self.clock,
            buckets=local_buckets(hotkey, with_aggregator=aggregator),
            hotkey=hotkey,
            on_row=self.rows.append,
            timestamp_resolution=0.0,
            runner=Synchronous(),  # a fake clock sees every step
            scratch=self.scratch,
            **extra,
        )

    async def run(self, windows):
        stop = asyncio.Event()
        neurons = [self.validator, *self.miners]
        return await asyncio.gather(*(n.run(stop, max_windows=windows) for n in neurons))

    def validator_rows(self):
        return [r for r in self.rows if r.get("event") == "window" and r["role"] == "validator"]


def test_relative_improvement_is_clipped():
    assert relative_improvement(2.0, 1.0) == 0.5
    assert relative_improvement(1.0, 5.0) == -1.0
    assert relative_improvement(1.0, float("nan")) == -1.0


async def test_network_trains_and_publishes(tmp_path):
    net = Net(tmp_path)
    assert await net.run(8) == [8, 8, 8, 8]
    rows = net.validator_rows()
    assert len(rows) == 8
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.8
    assert all(r["success_rate"] == 1.0 and not r["skipped"] for r in rows)
    assert all(r["published_bytes"] > 0 for r in rows)
    miner_rows = [r for r in net.rows if r.get("role") == "miner" and r.get("event") == "window"]
    assert all(r["applied"] and r["upload"] == "ok" for r in miner_rows)
    assert any(r["peer_list"] for r in miner_rows)  # later windows follow the validator's list

    # The aggregate is in the aggregator bucket, codec-encoded, for the last window.
    agg_store = net.opener.open(local_buckets("val", with_aggregator=True).aggregator_read)
    window = rows[-1]["window"]
    blob = await agg_store.get(keys.aggregator(window, HP.version))
    expected = Expected(
        version=HP.version, codec=DenseCompressor(), shapes=net.validator.shapes, window=window
    )
    assert codec.decode(blob.data, expected).meta.uid == net.validator.uid

    # A peer list and weights were published.
    metagraph = await net.validator.chain.metagraph()
    commitments = await net.validator.chain.bucket_commitments()
    listed = await get_peer_list(net.opener, metagraph, commitments, window + 1, HP.version)
    assert listed is not None and set(listed.peers) == {1, 2, 3}
    assert set(net.network.weights("val")) == {1, 2, 3}


@pytest.mark.parametrize("faulty", ["garbage", "late", "silent"])
async def test_faulty_miner_is_skipped_and_scored_lowest(tmp_path, faulty):
    net = Net(tmp_path, miners=2, faulty=faulty)
    await net.run(4)
    rows = net.validator_rows()
    bad = str(net.miners[-1].uid)
    assert all(bad in r["skipped"] for r in rows)
    reasons = " ".join(r["skipped"][bad] for r in rows)
    # a late upload lands after the validator stopped polling, or is seen and refused as late
    expected = {
        "garbage": ("invalid",),
        "late": ("too_late", "not_found"),
        "silent": ("not_found",),
    }
    assert any(reason in reasons for reason in expected[faulty])
    scores = rows[-1]["scores"]
    assert min(scores, key=scores.get) == bad
    assert rows[-1]["loss"] < rows[0]["loss"]
    # honest miners skip it too (when the peer list still names it), and keep training
    honest = [
        r
        for r in net.rows
        if r.get("event") == "window" and r["role"] == "miner" and r["uid"] != int(bad)
    ]
    assert all(r["applied"] for r in honest)
    assert all(bad in r["skipped"] for r in honest if int(bad) in r["peers"])


def miner_rows(net, uid):
    return [r for r in net.rows if r.get("event") == "window" and r.get("uid") == uid]


@pytest.mark.parametrize(("signer", "reason"), [(None, "unsigned"), ("m0", "bad_signature")])
async def test_uploads_are_signed_and_peers_refuse_what_their_hotkey_did_not_sign(
    tmp_path, signer, reason
):
    net = Net(tmp_path, miners=2)
    net.network.register("forger")
    forger = net.make(Miner, "forger", signer=signer and dev_signer(signer))
    net.miners.append(forger)
    await net.run(3)
    bad = str(forger.uid)

    def refused(skipped):
        return set(skipped) == {bad} and skipped[bad].startswith(f"invalid: {reason}")

    for row in net.validator_rows():
        assert refused(row["skipped"]) and set(row["evaluations"]) == {"1", "2"}
    for honest in net.miners[:2]:
        rows = miner_rows(net, honest.uid)
        assert all(r["applied"] and refused(r["skipped"]) for r in rows)
    # what an honest miner stored verifies as signed by its own hotkey
    blob = await net.miners[0].store.get(keys.gradient(rows[-1]["window"], 1, HP.version))
    strict = net.miners[0].expected.for_peer(rows[-1]["window"], 1, "m0")
    assert codec.decode(blob.data, strict, verifier=DevKeyVerifier()).signed


async def test_a_copier_is_caught_scored_lowest_and_left_out_of_the_aggregate(tmp_path):
    net = Net(tmp_path, miners=2, faulty="copier")
    await net.run(4)
    copier = str(net.miners[-1].uid)
    uploads = [r["upload"] for r in miner_rows(net, int(copier))]
    assert all(u in ("copy_of_1", "copy_of_2") for u in uploads), uploads
    for row in net.validator_rows():
        assert set(row["skipped"]) == {copier}
        assert row["skipped"][copier].startswith("copy: copy_of_")
        assert copier not in row["evaluations"] and int(copier) not in row["aggregated"]
    scores = net.validator_rows()[-1]["scores"]
    assert scores[copier] == HP.missing_gradient_penalty_score
    assert all(scores[h] > scores[copier] for h in ("1", "2"))


async def test_restarted_miner_resumes_where_it_stopped(tmp_path):
    net = Net(tmp_path, miners=1)
    await net.run(3)
    miner = net.miners[0]
    stopped_at, step = miner.last_window, miner.global_step
    weights = {n: p.detach().clone() for n, p in miner.model.named_parameters()}
    again = net.make(Miner, "m0")
    await again.setup()
    assert (again.last_window, again.global_step) == (stopped_at, step)
    for name, p in again.model.named_parameters():
        assert p.detach().equal(weights[name])
    assert again.error is not None


async def test_stop_event_ends_the_loop_between_windows(tmp_path):
    net = Net(tmp_path, miners=1)
    stop = asyncio.Event()
    stop.set()
    assert await net.miners[0].run(stop) == 0


async def test_stale_gradients_are_cleaned(tmp_path):
    net = Net(tmp_path, miners=1)
    await net.run(HP.stale_retention + 3)
    miner = net.miners[0]
    names = [m.key async for m in miner.store.list("gradient-")]
    windows = sorted(keys.parse(n).window for n in names)
    assert windows[0] >= miner.last_window - HP.stale_retention


async def test_late_joiner_loads_the_checkpoint_and_catches_up(tmp_path):
    hparams = attrs.evolve(HP, checkpoint_frequency=3, sync_max_steps_behind=4)
    net = Net(tmp_path, miners=2, hparams=hparams, scratch=True)
    await net.run(4)
    # checkpoint after step 3; the 4th window's aggregate is then replayed from the bucket
    assert [r["checkpoint"] for r in net.validator_rows()] == [False, False, True, False]
    validator = net.validator
    net.clock.advance(hparams.blocks_per_window * 0.5)  # the network moved on one window
    net.network.register("late")
    aggregator = net.opener.open(local_buckets("val", with_aggregator=True).aggregator_read)
    late = net.make(Miner, "late", aggregates=aggregator)
    await late.setup()
    assert late.last_window == validator.last_window
    assert late.global_step == validator.global_step
    for name, p in late.model.named_parameters():
        assert p.detach().equal(dict(validator.model.named_parameters())[name].detach())


async def test_a_miner_with_a_fast_clock_and_a_lagging_chain_measures_both(tmp_path, caplog):
    """Setup corrects a clock 4 s ahead of the store and warns of a finality lag that leaves no
    time to upload (10 blocks of 0.5 s > the 1.8 s time window)."""
    net = Net(tmp_path, miners=1)
    net.network.finality_lag = 10
    net.clock.advance(60)
    miner = net.miners[0]
    miner.clock.local = NetworkClock(net.clock, offset=-4.0)  # this machine: 4 s ahead
    with caplog.at_level("WARNING"):
        await miner.check_time()
    assert 3.0 <= miner.clock.offset <= 4.0
    assert abs((miner.clock.now() - net.clock.now()).total_seconds()) <= 1.0
    assert miner.finality_lag == 10
    assert "ahead of the network" in caplog.text and "no upload can be on time" in caplog.text


async def test_a_miner_whose_upload_misses_the_time_window_says_so(tmp_path, caplog):
    late = attrs.evolve(HP, time_window_delta_seconds=0.01)  # closes before anyone can upload
    net = Net(tmp_path, miners=1, hparams=late)
    with caplog.at_level("WARNING"):
        await net.run(1)
    rows = [r for r in net.rows if r.get("event") == "window" and r["role"] == "miner"]
    assert [r["upload"] for r in rows] == ["too_late"]
    assert "peers will skip it" in caplog.text


async def test_a_miner_survives_a_failing_upload_and_an_unreachable_chain(tmp_path, caplog):
    """A failure costs its window (a WARNING and a `window_failed` event), never the process."""
    from ports import ChainError, TransientStorageError

    net = Net(tmp_path, miners=1)
    await net.validator.setup()  # the validator publishes the start window the miner waits for
    assert await net.validator.wait_for_start_window(asyncio.Event()) is not None
    miner = net.miners[0]
    real_put, real_block = miner.exchange.put, miner.chain.current_block
    failures = {"put": 2, "block": 3}

    async def flaky_put(*args, **kwargs):
        if failures["put"]:
            failures["put"] -= 1
            raise TransientStorageError("R2 answered 503 after the retries")
        return await real_put(*args, **kwargs)

    async def flaky_block():
        if failures["block"] and failures["put"] == 0:
            failures["block"] -= 1
            raise ChainError("the chain cannot be reached")
        return await real_block()

    miner.exchange.put = flaky_put
    miner.chain.current_block = flaky_block
    with caplog.at_level("WARNING"):
        done = await miner.run(asyncio.Event(), max_windows=4)
    assert done == 4
    failed = [r for r in net.rows if r.get("event") == "window_failed"]
    assert [r["failed_windows"] for r in failed] == [1, 2]
    assert all("503" in r["reason"] for r in failed)
    assert [r["upload"] for r in net.rows if r.get("event") == "window"] == ["ok", "ok"]
    assert "window" in caplog.text and "cannot read the chain" in caplog.text


async def test_the_start_window_is_published_once_and_a_restart_never_moves_it(tmp_path):
    net = Net(tmp_path, miners=1)
    await net.run(2)
    first = await net.miners[0]._read_start_window()
    assert first is not None and net.miners[0].start_window == first
    rows = [r for r in net.rows if r.get("event") == "window"]
    assert min(r["window"] for r in rows) >= first  # nobody worked before the start window
    net.clock.advance(60)  # a restart, many windows later
    again = net.make(Validator, "val", aggregator=True)
    await again.setup()
    assert await again.wait_for_start_window(asyncio.Event()) == first


async def test_miners_and_lower_stake_validators_wait_for_the_start_window(tmp_path):
    net = Net(tmp_path, miners=1)
    net.network.register("val2", stake=1.0, validator_permit=True)
    small = net.make(Validator, "val2")
    stop = asyncio.Event()
    waiting = [asyncio.ensure_future(n.run(stop, max_windows=1)) for n in (net.miners[0], small)]
    await net.clock.sleep(30)  # long enough for many windows: none may start
    assert not [r for r in net.rows if r.get("event") == "window"]
    assert await small._read_start_window() is None  # it does not publish it itself
    await net.validator.setup()
    start = await net.validator.wait_for_start_window(asyncio.Event())
    assert await asyncio.gather(*waiting) == [1, 1]
    assert {r["window"] for r in net.rows if r.get("event") == "window"} == {start}
