"""What a localnet run must show, whatever the load on the machine it runs on.

Windows are real time: on a loaded machine a neuron can be late, and then its peers skip it
for timing (`not_found`, `too_late`, a gather `error: timeout`). That must never turn into a
wrong verdict: an honest miner refused as invalid or as a copy, a faulty one aggregated. So
the checks are on verdicts, and on timing only as "most windows", never "every window".
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def run_localnet(
    tmp_path: Path, *args: str, timeout: float = 150
) -> tuple[subprocess.CompletedProcess, dict]:
    """`templar-comms localnet *args` in its own process, its network under tmp_path/net, its
    chart at tmp_path/loss.png; the run (which must have succeeded) and its JSON table."""
    out = tmp_path / "table.json"
    run = subprocess.run(
        [
            sys.executable, "-m", "neurons.cli", "localnet", *args,
            "--dir", str(tmp_path / "net"), "--json", str(out),
            "--plot", str(tmp_path / "loss.png"),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run, json.loads(out.read_text())


TIMING = ("not_found", "too_late", "too_early", "error: timeout")


def timing(reason: str) -> bool:
    return reason.startswith(TIMING)


def check_run(
    rows: Sequence[Mapping[str, Any]],
    honest: Sequence[str],
    faulty: Mapping[str, str] | None = None,
) -> None:
    """`honest` uids are aggregated in most windows and skipped only for timing; each
    `faulty` uid ({uid: reason prefix}) is never aggregated, is skipped in every window and
    caught for its fault in most; the validator's loss falls; faulty miners score lowest."""
    faulty = faulty or {}
    n = len(rows)
    for uid in honest:
        reasons = [r["skipped"][uid] for r in rows if uid in r["skipped"]]
        assert all(timing(why) for why in reasons), (uid, reasons)
        used = sum(int(uid) in r["aggregated"] for r in rows)
        assert used >= n / 2, (uid, used, [r["skipped"] for r in rows])
    for uid, caught_as in faulty.items():
        assert not any(int(uid) in r["aggregated"] for r in rows), uid
        reasons = [r["skipped"].get(uid, "") for r in rows]
        assert all(why.startswith(caught_as) or timing(why) for why in reasons), (uid, reasons)
        assert sum(why.startswith(caught_as) for why in reasons) >= n / 2, (uid, reasons)
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    if faulty:
        scores = rows[-1]["scores"]
        worst_honest = min(scores[u] for u in honest)
        assert all(scores[u] <= worst_honest for u in faulty), scores
        assert max(scores[u] for u in faulty) < max(scores[u] for u in honest), scores
