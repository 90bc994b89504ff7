"""The localnet end to end: separate processes, a file chain, local buckets, real time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neurons.localnet_view import COLUMNS


@pytest.mark.slow
def test_localnet_trains_and_skips_a_garbage_miner(tmp_path):
    out = tmp_path / "table.json"
    run = subprocess.run(
        [
            sys.executable, "-m", "neurons.cli", "localnet",
            "--miners", "2", "--windows", "6", "--faulty", "garbage",
            "--block-time", "0.4", "--dir", str(tmp_path / "net"), "--json", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    table = json.loads(out.read_text())
    assert table["columns"] == list(COLUMNS)
    rows = table["rows"]
    assert len(rows) == 6
    assert all(set(COLUMNS) <= set(r) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["skipped"].get("3", "").startswith("invalid") for r in rows)
    assert all(r["success_rate"] == pytest.approx(2 / 3) for r in rows)
    scores = rows[-1]["scores"]
    assert min(scores, key=scores.get) == "3"
    assert set(table["exit_codes"].values()) == {0}  # every neuron stopped cleanly on SIGTERM
    assert (tmp_path / "net" / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert "windows: loss" in run.stdout
