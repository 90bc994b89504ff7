"""The localnet with the built-in lm task: corpus pages in the dataset bucket, a byte-level
transformer trained by separate processes, its held-out loss falling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.expect import check_run


@pytest.mark.slow
def test_localnet_trains_the_lm_task_from_the_dataset_bucket(tmp_path):
    out = tmp_path / "table.json"
    run = subprocess.run(
        [
            sys.executable, "-m", "neurons.cli", "localnet", "--task", "lm",
            "--miners", "2", "--windows", "4",
            "--dir", str(tmp_path / "net"), "--json", str(out),
            "--plot", str(tmp_path / "loss.png"),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "dataset bucket: 393216 bytes of lm corpus pages" in run.stdout
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4
    check_run(rows, honest=("1", "2"))  # includes: the held-out loss falls
    hparams = json.loads((tmp_path / "net" / "hparams.json").read_text())
    assert hparams["task"] == "lm"
    # Miners read their pages: none was skipped (a skipped page logs a WARNING).
    for name in ("miner-1", "miner-2"):
        log = (tmp_path / "net" / "logs" / f"{name}.log").read_text()
        assert "lm task: page" not in log, log
