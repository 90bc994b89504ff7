"""neurons.config: hparams file and overrides, settings from env and flags, R2 env, secrets."""

from __future__ import annotations

import json

import attrs
import pytest
from typer.testing import CliRunner

from core.retention import ALL_KINDS
from neurons.buckets import r2_neuron_buckets
from neurons.cli import app
from neurons.config import (
    ConfigError,
    HParams,
    describe,
    load_hparams,
    load_settings,
    parse_assignment,
    r2_buckets,
)

SECRET = "s3cr3t-" + "x" * 57


def r2_env(secret: str = SECRET) -> dict[str, str]:
    env = {}
    for role in ("GRADIENTS", "AGGREGATOR"):
        env |= {
            f"R2_{role}_ACCOUNT_ID": "a" * 32,
            f"R2_{role}_BUCKET_NAME": "a" * 32,
            f"R2_{role}_READ_ACCESS_KEY_ID": "r" * 32,
            f"R2_{role}_READ_SECRET_ACCESS_KEY": secret,
            f"R2_{role}_WRITE_ACCESS_KEY_ID": "w" * 32,
            f"R2_{role}_WRITE_SECRET_ACCESS_KEY": secret + "w",
        }
    return env


def test_defaults_use_templar_names():
    h = HParams()
    assert (h.topk_compression, h.target_chunk, h.blocks_per_window) == (32, 64, 7)
    assert h.peer_settings().gather_peer_count == h.gather_peer_count
    assert h.topk_params().topk == h.topk_compression


def test_in_flight_budget_reaches_the_fetches():
    fetch = load_hparams(overrides={"gather_in_flight_mb": 2}).gather_settings().fetch
    assert fetch.in_flight_bytes == 2 << 20
    assert attrs.evolve(fetch, max_bytes=1 << 20).slots == 2
    with pytest.raises(ConfigError, match="gather_in_flight_mb"):
        load_hparams(overrides={"gather_in_flight_mb": 0})


def test_file_then_overrides(tmp_path):
    path = tmp_path / "hparams.json"
    path.write_text(json.dumps({"blocks_per_window": 3, "learning_rate": 1}))
    h = load_hparams(path, {"blocks_per_window": 9})
    assert h.blocks_per_window == 9  # --set beats the file
    assert h.learning_rate == 1.0 and isinstance(h.learning_rate, float)  # int is a fine float


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"blocks_per_windw": 3}, "blocks_per_windw"),
        ({"blocks_per_window": "7"}, "blocks_per_window"),
        ({"blocks_per_window": 2.5}, "blocks_per_window"),
        ({"use_dct": 1}, "use_dct"),
        ({"blocks_per_window": 0}, "blocks_per_window"),
        ({"normalisation": "max"}, "normalisation"),
        ({"minimum_peers": 20, "gather_peer_count": 10}, "minimum_peers"),
        ({"aggregate_retention": 50}, "aggregate_retention"),  # catch-up needs 103
        ({"peer_list_retention": 0}, "peer_list_retention"),
    ],
)
def test_bad_hparams_name_the_key(tmp_path, body, key):
    path = tmp_path / "hparams.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError) as info:
        load_hparams(path)
    assert info.value.key == key
    assert key in str(info.value)


def test_retention_policy_covers_every_kind_we_write():
    policy = load_hparams(overrides={"checkpoint_frequency": 20, "janitor_max_deletes": 7})
    policy = policy.retention_policy()
    assert policy.kinds == ALL_KINDS and policy.version == HParams().version
    assert policy.aggregate_retention == 20 + HParams().sync_max_steps_behind  # 0: the floor
    assert (policy.peer_list_retention, policy.max_deletes) == (10, 7)
    explicit = load_hparams(overrides={"aggregate_retention": 500}).retention_policy()
    assert explicit.aggregate_retention == 500


def test_core_limits_are_config_errors():
    with pytest.raises(ConfigError, match="target_chunk"):
        load_hparams(overrides={"target_chunk": 100})


def test_not_json_and_not_an_object(tmp_path):
    path = tmp_path / "h.json"
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_hparams(path)
    path.write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_hparams(path)


def test_assignments():
    assert parse_assignment("learning_rate=0.5") == ("learning_rate", 0.5)
    assert parse_assignment("task=lm") == ("task", "lm")
    assert parse_assignment("use_dct=true") == ("use_dct", True)
    with pytest.raises(ConfigError, match="nope"):
        parse_assignment("nope=1")
    with pytest.raises(ConfigError):
        parse_assignment("learning_rate")


def test_settings_precedence_flags_over_env_over_defaults():
    assert load_settings({}).storage == "r2"
    env = {"TEMPLAR_STORAGE": "local", "TEMPLAR_NETUID": "7", "TEMPLAR_BLOCK_TIME": "2"}
    s = load_settings(env)
    assert (s.storage, s.netuid, s.block_time) == ("local", 7, 2.0)
    s = load_settings(env, {"storage": "memory", "netuid": None})
    assert (s.storage, s.netuid) == ("memory", 7)


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="TEMPLAR_NETUID"):
        load_settings({"TEMPLAR_NETUID": "three"})
    with pytest.raises(ConfigError, match="storage"):
        load_settings({}, {"storage": "floppy"})
    with pytest.raises(ConfigError, match="nope"):
        load_settings({}, {"nope": 1})


def test_r2_env_missing_names_every_variable_and_no_value():
    env = r2_env()
    del env["R2_GRADIENTS_READ_ACCESS_KEY_ID"]
    with pytest.raises(ConfigError) as info:
        r2_buckets(env, ("gradients", "aggregator"))
    assert "R2_GRADIENTS_READ_ACCESS_KEY_ID" in str(info.value)
    assert SECRET not in str(info.value)


def test_r2_buckets_with_endpoint_keep_secrets_out_of_repr():
    buckets = r2_neuron_buckets(
        r2_buckets(r2_env(), ("gradients", "aggregator")), "http://127.0.0.1:1"
    )
    assert buckets.gradients_write.secret_access_key == SECRET + "w"
    assert buckets.aggregator_read.endpoint == "http://127.0.0.1:1"
    assert SECRET not in repr(buckets) and SECRET not in str(buckets)
    assert SECRET not in json.dumps(describe(HParams(), load_settings({})))


def test_cli_never_prints_secrets(monkeypatch, tmp_path):
    env = r2_env()
    del env["R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY"]  # write key id without its secret
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        app,
        [
            "miner", "--storage", "r2", "--chain", "memory", "--hotkey", "m",
            "--state-dir", str(tmp_path), "--log-level", "DEBUG",
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY" in result.output
    assert SECRET not in result.output


def test_cli_reports_unknown_hparam(tmp_path):
    result = CliRunner().invoke(app, ["validator", "--set", "topk=3", "--hotkey", "v"])
    assert result.exit_code == 2
    assert "topk" in result.output
