"""Scratch directories: a dead process's leftovers are swept, a live one's are not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapters.scratch import TempScratch, sweep_abandoned

_CRASH = """
import os, sys
from adapters.scratch import TempScratch
scratch = TempScratch(sys.argv[1])
path = scratch.create("checkpoint")
open(path, "wb").write(b"half a checkpoint")
os._exit(9)  # killed mid-save: no close, no cleanup
"""


def test_a_dead_processes_scratch_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    parent = tmp_path / "scratch"
    subprocess.run([sys.executable, "-c", _CRASH, str(parent)], check=False)
    [left] = list(parent.iterdir())
    assert any(left.iterdir())
    live = TempScratch(parent)
    kept = Path(live.create("mine"))

    assert sweep_abandoned(parent) == [left]
    assert not left.exists()
    assert kept.exists()
    live.close()
    assert list(parent.iterdir()) == []


def test_sweeping_leaves_other_files_and_links_alone(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"x")
    parent = tmp_path / "scratch"
    parent.mkdir()
    (parent / "scratch-link").symlink_to(outside)
    (parent / "notes.txt").write_text("mine")
    assert sweep_abandoned(parent) == []
    assert (outside / "precious").exists() and (parent / "notes.txt").exists()
    assert sweep_abandoned(tmp_path / "missing") == []
