"""The localnet end to end: separate processes, a file chain, local buckets, real time."""

from __future__ import annotations

import json

import pytest

from neurons.localnet_view import COLUMNS
from tests.e2e.expect import check_run, run_localnet


@pytest.mark.slow
def test_localnet_trains_and_skips_a_garbage_miner_and_catches_a_copier(tmp_path):
    run, table = run_localnet(
        tmp_path, "--miners", "2", "--windows", "6", "--faulty", "garbage,copier",
        "--block-time", "0.4",
    )  # fmt: skip
    assert table["columns"] == list(COLUMNS)
    rows = table["rows"]
    assert len(rows) == 6
    assert all(set(COLUMNS) <= set(r) for r in rows)
    # uid 3 uploads garbage; uid 4 re-uploads an honest miner's signed gradient as its own,
    # signed by itself (a first window may find nothing to copy in time: it uploads nothing)
    check_run(rows, honest=("1", "2"), faulty={"3": "invalid", "4": "copy"})
    assert set(table["exit_codes"].values()) == {0}  # every neuron stopped cleanly on SIGTERM
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert "windows: loss" in run.stdout
    assert "uid 3 (garbage) skipped in 6/6 windows" in run.stdout
    assert "uid 4 (copier) skipped in 6/6 windows" in run.stdout
    seed_operations_show_in_the_events(tmp_path / "net")


def _events(root, name: str) -> list[dict]:
    lines = (root / "events" / f"{name}.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "window"]


def seed_operations_show_in_the_events(root) -> None:
    """The seed's operations beyond the gather, as the neurons' own event rows and files
    show them: the evaluated subset and the debug reports read, the miners' debug reports
    published with a local copy, the start window read, the janitor run."""
    validator = _events(root, "validator-0")
    assert all(isinstance(r["evaluated"], list) for r in validator)
    assert any(r["reports"] for r in validator), [r["reports"] for r in validator]
    miners = [r for name in ("miner-1", "miner-2") for r in _events(root, name)]
    assert sum(r["debug_report"] for r in miners) >= len(miners) / 2
    files = [p.name for p in root.rglob("*") if p.is_file()]
    assert any(n.startswith("debug-") and n.endswith(".json") for n in files), files
    assert any(n.startswith("start_window-") for n in files), files
    assert all("cleaned" in r for r in validator + miners)


@pytest.mark.slow
def test_localnet_in_the_templar_profile_uses_templars_names_and_time_windows(tmp_path):
    """`--protocol templar`: every bucket holds Templar's names only, and honest miners,
    uploading once their window is over, are aggregated; a garbage miner is still refused."""
    net = tmp_path / "net"
    _, table = run_localnet(
        tmp_path, "--protocol", "templar", "--miners", "2", "--windows", "5",
        "--faulty", "garbage", "--block-time", "0.4",
    )  # fmt: skip
    check_run(table["rows"], honest=("1", "2"), faulty={"3": "invalid"})
    names = {p.name for p in (net / "storage").glob("*/objects/*") if p.is_file()}
    assert any(n.startswith("gradient-") and n.endswith("-v1.pt") for n in names), names
    assert any(n.startswith("aggregator-") and n.endswith("-v1.pt") for n in names), names
    assert any(n.startswith("peers_") for n in names) and "start_window_v1.json" in names
    assert not any(n.endswith(".safetensors") or n.startswith("peers-") for n in names), names
    assert json.loads((net / "hparams.json").read_text())["protocol"] == "templar"
