"""The localnet on S3: a SeaweedFS it starts, one bucket per neuron, stopped however it ends."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.storage.seaweedfs import LOOPBACK, weed_binary
from neurons.localnet_view import COLUMNS
from tests.e2e.expect import check_run

CANNOT_START = "SeaweedFS cannot start"


def _localnet(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "neurons.cli", "localnet", "--storage", "s3",
        "--miners", "2", "--block-time", "0.4", "--dir", str(run_dir),
        "--plot", str(run_dir / "loss.png"), *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return dict(os.environ, COLUMNS="200")  # rich must not wrap the endpoint


def _port(output: str) -> int:
    found = re.search(rf"SeaweedFS at http://{re.escape(LOOPBACK)}:(\d+)", output)
    assert found, output
    return int(found.group(1))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _skip_without_weed(output: str) -> None:
    if weed_binary() is None or CANNOT_START in output:
        pytest.skip(f"{CANNOT_START}: {output[-500:]}")


@pytest.mark.slow
def test_localnet_on_s3_trains_and_stops_seaweedfs(tmp_path):
    out = tmp_path / "table.json"
    run = subprocess.run(
        _localnet(tmp_path / "net", "--windows", "5", "--json", str(out)),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    _skip_without_weed(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    table = json.loads(out.read_text())
    assert table["storage"] == "s3"
    assert table["columns"] == list(COLUMNS)
    rows = table["rows"]
    assert len(rows) == 5
    assert all(set(COLUMNS) <= set(r) for r in rows)
    check_run(rows, honest=("1", "2"))
    assert all(r["bytes"] > 0 for r in rows if r["aggregated"])
    assert set(table["exit_codes"].values()) == {0}
    assert "windows: loss" in run.stdout
    assert (tmp_path / "net" / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "net" / "storage").exists()  # nothing went to local buckets
    assert (tmp_path / "net" / "logs" / "seaweedfs.log").stat().st_size > 0
    assert not _listening(_port(run.stdout))


@pytest.mark.slow
def test_sigterm_stops_the_neurons_and_seaweedfs(tmp_path):
    run_dir = tmp_path / "net"
    proc = subprocess.Popen(
        _localnet(run_dir, "--windows", "50"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    try:
        # Wait for the neurons to be running: their events files appear with a window.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.stat().st_size for p in run_dir.glob("events/*.jsonl")):
                break
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    _skip_without_weed(output)
    assert proc.returncode == 1, output
    assert "interrupted" in output
    codes = json.loads((run_dir / "localnet.json").read_text())["exit_codes"]
    assert len(codes) == 3
    assert not _listening(_port(output))
