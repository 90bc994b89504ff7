"""The localnet with the built-in lm task: corpus pages in the dataset bucket, a byte-level
transformer trained by separate processes, its held-out loss falling."""

from __future__ import annotations

import json

import pytest

from tests.e2e.expect import check_run, run_localnet


@pytest.mark.slow
def test_localnet_trains_the_lm_task_from_the_dataset_bucket(tmp_path):
    run, table = run_localnet(
        tmp_path, "--task", "lm", "--miners", "2", "--windows", "4", timeout=400
    )
    assert "dataset bucket: 393216 bytes of lm corpus pages" in run.stdout
    rows = table["rows"]
    assert len(rows) == 4
    check_run(rows, honest=("1", "2"))  # includes: the held-out loss falls
    hparams = json.loads((tmp_path / "net" / "hparams.json").read_text())
    assert hparams["task"] == "lm"
    # Miners read their pages: none was skipped (a skipped page logs a WARNING).
    for name in ("miner-1", "miner-2"):
        log = (tmp_path / "net" / "logs" / f"{name}.log").read_text()
        assert "lm task: page" not in log, log
