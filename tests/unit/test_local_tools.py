"""`templar-comms local register|s3|stop-s3` and the examples/ folder."""

from __future__ import annotations

import configparser
import json
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.chain.fake import FakeNetwork
from adapters.clock import SystemClock
from neurons.cli import app
from neurons.config import ConfigError, load_hparams
from neurons.local_tools import env_lines

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _invoke(*args: str):
    return CliRunner().invoke(app, ["local", *args])


def test_register_creates_the_chain_and_sets_stake_and_permit(tmp_path):
    chain = tmp_path / "run" / "chain.json"
    common = ("--chain-path", str(chain), "--block-time", "0.5")
    v = _invoke("register", "validator-0", "--validator", "--stake", "1000", *common)
    m = _invoke("register", "miner-1", "miner-2", "--stake", "1", *common)
    assert v.exit_code == 0, v.output
    assert m.exit_code == 0, m.output
    assert "validator-0: uid 0 (stake 1000, validator permit)" in v.output
    assert "miner-2: uid 2 (stake 1)" in m.output
    state = json.loads(chain.read_text())
    assert state["block_time"] == 0.5
    # S3 stamps have whole seconds: the genesis is put just before one
    genesis = datetime.fromisoformat(state["genesis_time"])
    assert genesis.microsecond == 999000
    neurons = {n["hotkey"]: n for n in state["neurons"]}
    assert neurons["validator-0"]["validator_permit"] is True
    assert neurons["validator-0"]["stake"] == 1000.0
    assert neurons["miner-1"]["validator_permit"] is False
    # again: same uid, new stake and permit
    again = _invoke("register", "miner-1", "--stake", "5", "--validator", *common)
    assert "miner-1: uid 1 (stake 5, validator permit)" in again.output
    network = FakeNetwork.at_path(chain, SystemClock())
    assert network.read()["neurons"][1]["stake"] == 5.0


def test_register_refuses_another_block_time_for_an_existing_chain(tmp_path):
    chain = str(tmp_path / "chain.json")
    assert _invoke("register", "a", "--chain-path", chain, "--block-time", "1").exit_code == 0
    result = _invoke("register", "b", "--chain-path", chain, "--block-time", "12")
    assert result.exit_code == 2
    assert "has blocks of 1 s, not 12 s" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "name at least one --validator or --miner"),
        (("--miner", "a", "--miner", "a"), "each hotkey may be named once"),
        (("--miner", "../x"), "no '/'"),
    ],
)
def test_s3_refuses_bad_neuron_lists(tmp_path, args, message):
    result = _invoke("s3", "--dir", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_stop_without_a_server_says_so(tmp_path):
    result = _invoke("stop-s3", "--dir", str(tmp_path))
    assert result.exit_code == 0
    assert "no S3 server" in result.output


def test_env_lines_point_every_bucket_at_the_endpoint():
    lines = env_lines("http://127.0.0.1:8333", {"R2_GRADIENTS_BUCKET_NAME": "b"})
    assert lines == [
        "export TEMPLAR_STORAGE=r2",
        "export TEMPLAR_S3_ENDPOINT=http://127.0.0.1:8333",
        "export R2_GRADIENTS_BUCKET_NAME=b",
    ]


@pytest.mark.parametrize("name", ["hparams.json", "local-hparams.json"])
def test_example_hparams_load_as_given_to_hparams(name):
    hparams = load_hparams(EXAMPLES / name)
    body = json.loads((EXAMPLES / name).read_text())
    for key, value in body.items():
        assert getattr(hparams, key) == value


def test_a_bad_hparams_file_would_be_refused(tmp_path):
    bad = tmp_path / "h.json"
    bad.write_text(json.dumps({"blocks_per_windows": 7}))
    with pytest.raises(ConfigError):
        load_hparams(bad)


@pytest.mark.parametrize("role", ["miner", "validator"])
def test_systemd_units_restart_on_failure_and_hold_no_secret(role):
    path = EXAMPLES / "systemd" / f"templar-{role}.service"
    text = path.read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(text)
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"].startswith("/etc/templar/")
    assert service["ExecStart"].split()[1] == role
    assert "--hparams" in service["ExecStart"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # the R2 keys come from the EnvironmentFile only
    assert "R2_" not in "".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "SECRET" not in text.upper().replace("SECRETS", "")
