"""The kernel warm-up compiles what the neurons' gathers run, before their first window."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neurons.warmup import warm


@pytest.mark.slow
def test_after_the_warm_up_neurons_compile_no_kernel():
    # A fresh process: kernels compiled by earlier tests in this one would hide a gap.
    run = subprocess.run(
        [sys.executable, "-m", "tests.unit.warmup_probe"],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"made": {}, "windows": {}, "formats": {}}, report


def test_the_warm_up_says_what_it_did():
    warmed = warm()
    assert warmed.formats == 10
    text = warmed.describe()
    assert "gather kernels ready for 10 wire format(s)" in text
    assert "compiled" in text and "loaded from the cache" in text
