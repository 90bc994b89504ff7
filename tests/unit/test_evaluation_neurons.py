"""The validator evaluates a rotating subset of miners; miners publish debug reports, with a
local copy, and the janitor sweeps both (in-memory fakes and a FakeClock)."""

from __future__ import annotations

import logging

import attrs

from adapters.storage.chaos import NO_FAULT, ChaosOpener, Fault
from adapters.storage.local import LocalStore
from core import debug, keys
from core.peers.evaluation import rotation_bound
from neurons.buckets import local_buckets
from tests.unit.test_neurons import HP, Net


def _local_stores(net: Net, tmp_path) -> None:
    for n, neuron in enumerate(net.miners):
        neuron.local = LocalStore(tmp_path / f"local-{n}", net.clock)


async def test_every_miner_is_evaluated_within_the_rotation_bound(tmp_path) -> None:
    hp = attrs.evolve(HP, uids_per_window=2)
    net = Net(tmp_path, miners=5, hparams=hp)
    await net.run(9)
    rows = net.validator_rows()
    assert all(len(r["evaluated"]) == 2 for r in rows)
    assert all(set(r["evaluations"]) <= set(map(str, r["evaluated"])) for r in rows)
    bound = rotation_bound(5, 2)
    # From the window every miner is active in the tracker's eyes, the rotation's bound holds.
    for start in range(2, len(rows) - bound + 1):
        seen = set().union(*(r["evaluated"] for r in rows[start : start + bound]))
        assert seen == {1, 2, 3, 4, 5}, (start, [r["evaluated"] for r in rows])
    # Scores and weights come only from evaluations: every miner got one.
    assert set(rows[-1]["scores"]) == {"1", "2", "3", "4", "5"}


async def test_miners_publish_debug_reports_that_the_validator_reads(tmp_path) -> None:
    net = Net(tmp_path, miners=2)
    _local_stores(net, tmp_path)
    await net.run(4)
    miner = net.miners[0]
    rows = [r for r in net.rows if r.get("uid") == miner.uid and r.get("event") == "window"]
    assert all(r["debug_report"] for r in rows)
    last = rows[-1]["window"]
    store = net.opener.open(local_buckets("m0").gradients_read)
    report = await debug.get_debug(store, last, miner.uid, HP.version)
    assert report.upload_bytes == rows[-1]["upload_bytes"]
    assert report.gather.used == len(rows[-1]["gathered"])
    assert report == await debug.get_debug(miner.local, last, miner.uid, HP.version)
    # The validator reads the evaluated miners' reports of the window before its own.
    validator_rows = net.validator_rows()
    read = [r["reports"] for r in validator_rows[1:]]
    assert any(str(miner.uid) in reports for reports in read), read
    for r in validator_rows[1:]:
        for uid, seen in r["reports"].items():
            assert seen["window"] == r["window"] - 1, (uid, seen)


async def test_the_janitor_sweeps_local_copies_too(tmp_path) -> None:
    hp = attrs.evolve(HP, debug_retention=2)
    net = Net(tmp_path, miners=2, hparams=hp)
    _local_stores(net, tmp_path)
    await net.run(7)
    miner = net.miners[0]
    windows = sorted(
        parsed.window
        for meta in [m async for m in miner.local.list("")]
        if (parsed := keys.parse(meta.key)) is not None and parsed.kind is keys.KeyKind.DEBUG
    )
    assert windows, "no local debug copies at all"
    assert len(windows) <= 3, windows  # the last `debug_retention` windows (and the newest)


async def test_a_debug_report_that_never_comes_costs_the_report_not_the_window(
    tmp_path, caplog
) -> None:
    net = Net(tmp_path, miners=2)

    def hang_reports(bucket: str, op: str, key: str) -> Fault:
        return Fault(latency=1e6) if key.startswith("debug-") else NO_FAULT

    net.validator.opener = ChaosOpener(net.opener, net.clock, hang_reports)
    with caplog.at_level(logging.WARNING, logger="neurons.validator"):
        await net.run(4)
    rows = net.validator_rows()
    assert len(rows) == 4
    assert all(r["reports"] == {} for r in rows)
    # Without the bound the validator would wait out the hanging reads (1e6 s on this clock).
    assert net.clock.monotonic() < 1e4
    assert "by the gather's deadline" in caplog.text
