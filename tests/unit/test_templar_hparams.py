"""Templar's own hparams.json (tests/fixtures/templar/, copied from its main) in both
profiles, the `protocol` hparam and --protocol, and the container's choice of profile."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core.profiles import NATIVE, TEMPLAR
from neurons.config import (
    HPARAM_FIELDS,
    TEMPLAR_RENAMES,
    ConfigError,
    HParams,
    hparams_as_mapping,
    hparams_from_mapping,
    load_hparams,
    load_settings,
)
from neurons.container import build_container
from tests.unit.test_cli_errors import one_line, run, workdir  # noqa: F401 (a fixture)
from tests.unit.test_neuron_config import r2_env

FIXTURE = Path(__file__).parents[1] / "fixtures" / "templar" / "hparams.json"
TEMPLAR_FILE = json.loads(FIXTURE.read_text())
# Templar's keys that have a meaning here (docs/templar.md, "hparams mapping").
MAPPED = {
    "batch_size", "inner_steps", "outer_learning_rate", "blocks_per_window",
    "windows_per_weights", "momentum_decay", "topk_compression", "target_chunk", "use_dct",
    "checkpoint_frequency", "gather_peer_count", "reserve_peer_count", "minimum_peers",
    "peer_replacement_frequency", "peer_list_window_margin", "active_check_interval",
    "recent_windows", "power_normalisation", "time_window_delta_seconds",
    "reset_inactivity_windows", "sync_max_steps_behind", "eval_lr_factor",
    "quantization_bins", "quantization_range", "uids_per_window",
}  # fmt: skip


def test_the_fixture_is_templars_file_of_52_keys() -> None:
    assert len(TEMPLAR_FILE) == 52
    assert TEMPLAR_FILE["quantization_bins"] == 4  # docs/configuration.md says so too


def test_templars_hparams_load_in_the_templar_profile(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="neurons.config"):
        h = load_hparams(FIXTURE, {"protocol": "templar"})
    assert h.protocol == "templar"
    for key in MAPPED:
        ours = TEMPLAR_RENAMES.get(key, key)
        assert getattr(h, ours) == TEMPLAR_FILE[key], key
    assert h.learning_rate == 1.0 and h.time_window_delta_seconds == 70.0
    assert (h.topk_compression, h.target_chunk, h.quantization_bins) == (64, 64, 4)
    unmapped = set(TEMPLAR_FILE) - MAPPED
    assert dict(h.unmapped) == {k: TEMPLAR_FILE[k] for k in unmapped}
    assert "spec_version" in h.unmapped and "optimizer" in h.unmapped
    notes = [r for r in caplog.records if "no meaning here" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert all(k in notes[0].getMessage() for k in unmapped)


def test_every_templar_key_is_mapped_or_kept_never_lost() -> None:
    h = load_hparams(FIXTURE, {"protocol": "templar"})
    for key in TEMPLAR_FILE:
        assert key in h.unmapped or TEMPLAR_RENAMES.get(key, key) in HPARAM_FIELDS, key


def test_templars_hparams_fail_in_the_native_profile_with_a_clear_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_hparams(FIXTURE)
    assert caught.value.key == "spec_version"  # the file's first key we do not know
    assert "unknown hparam" in str(caught.value) and "--protocol templar" in str(caught.value)


def test_the_file_may_choose_the_profile_and_overrides_beat_it(tmp_path) -> None:
    path = tmp_path / "hparams.json"
    path.write_text(json.dumps({**TEMPLAR_FILE, "protocol": "templar"}))
    assert load_hparams(path).protocol == "templar"
    with pytest.raises(ConfigError, match="spec_version"):
        load_hparams(path, {"protocol": "native"})


def test_a_mapped_key_with_a_bad_value_is_still_an_error_in_the_templar_profile() -> None:
    bad = {**TEMPLAR_FILE, "target_chunk": "64"}
    with pytest.raises(ConfigError, match="target_chunk"):
        hparams_from_mapping(bad, HParams(protocol="templar"))
    both = {"outer_learning_rate": 1.0, "learning_rate": 2.0}
    with pytest.raises(ConfigError, match="given twice"):
        hparams_from_mapping(both, HParams(protocol="templar"))


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ConfigError, match="native, templar"):
        load_hparams(None, {"protocol": "bittensor"})
    with pytest.raises(ConfigError, match="protocol"):
        HParams(protocol="bittensor")


def test_hparams_as_mapping_reads_back_to_the_same_hparams_with_the_unmapped_keys() -> None:
    h = load_hparams(FIXTURE, {"protocol": "templar"})
    again = hparams_from_mapping(hparams_as_mapping(h))
    assert again == h and dict(again.unmapped) == dict(h.unmapped)
    assert "unmapped" not in hparams_as_mapping(HParams())


@pytest.mark.parametrize(
    ("protocol", "chosen", "resolution"), [("native", NATIVE, 1.0), ("templar", TEMPLAR, 0.0)]
)
def test_the_container_picks_the_profile_once(tmp_path, protocol, chosen, resolution) -> None:
    settings = load_settings({}, {"state_dir": str(tmp_path), "chain": "memory"})
    hparams = HParams(protocol=protocol)
    c = build_container(hparams, settings, hotkey="hk", validator=False, env=r2_env())
    assert c.protocol() is chosen
    assert c.store_timestamp_resolution() == 1.0  # R2 keeps whole seconds
    assert c.timestamp_resolution() == resolution  # templar judges the stamp as reported


def test_protocol_flag_and_set_must_agree(workdir) -> None:  # noqa: F811
    result = run("miner", "--protocol", "templar", "--set", "protocol=native")
    one_line(result, "--protocol", "differs")


def test_native_cli_names_the_templar_key_and_the_flag(workdir) -> None:  # noqa: F811
    result = run("miner", "--hparams", str(FIXTURE))
    one_line(result, "spec_version", "--protocol templar")


def test_protocol_flag_and_variable_load_templars_file(workdir) -> None:  # noqa: F811
    # The file is accepted, its unused keys listed once at INFO; the next error is the
    # missing hotkey.
    for args, env in (
        (("--protocol", "templar"), None),
        ((), {"TEMPLAR_PROTOCOL": "templar"}),
    ):
        result = run("miner", "--hparams", str(FIXTURE), "--chain", "fake", *args, env=env)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 2 and "INFO" in lines[0] and "spec_version" in lines[0]
        assert lines[1].startswith("error: hotkey")


def test_the_templar_profile_aggregates_by_templars_rule_unless_told_otherwise() -> None:
    assert load_hparams(FIXTURE, {"protocol": "templar"}).normalisation == "kept_mean"
    told = load_hparams(FIXTURE, {"protocol": "templar", "normalisation": "unit"})
    assert told.normalisation == "unit"
    assert load_hparams(None, {}).normalisation == "unit"
