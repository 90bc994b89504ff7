"""Logging of a neuron process: the per-window line, JSON lines, levels, no wrapping."""

from __future__ import annotations

import io
import json
import logging

import pytest
from typer.testing import CliRunner

from neurons.cli import app
from neurons.logs import WINDOW_LOGGER, WindowLog, setup_logging, window_line

MINER_ROW = {
    "event": "window",
    "role": "miner",
    "uid": 3,
    "window": 812,
    "train_loss": 0.51234,
    "upload": "ok",
    "upload_bytes": 3020,
    "upload_seconds": 0.0412,
    "peers": [1, 2, 3, 4],
    "gathered": [1, 3],
    "skipped": {"2": "invalid: header_too_large: 8 MiB > 1 MiB", "4": "not_found"},
    "success_rate": 0.5,
    "gather_seconds": 0.318,
    "download_bytes": 12040,
    "seconds": 1.25,
    "cleaned": 2,
    "window_lag": 0,
}
VALIDATOR_ROW = {
    "event": "window",
    "role": "validator",
    "uid": 0,
    "window": 812,
    "loss": 0.8830,
    "loss_before": 0.9012,
    "gather_seconds": 0.11,
    "bytes": 11686,
    "asked": 5,
    "valid": 3,
    "success_rate": 0.6,
    "skipped": {"4": "invalid: header_too_large", "5": "copy: copy_of_2"},
    "aggregated": [1, 2, 3],
    "published_bytes": 3404,
    "upload_seconds": 0.02,
    "seconds": 0.5,
    "window_lag": 1,
}


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_a_miner_window_is_one_line_with_everything_an_operator_asks_for():
    line = window_line(MINER_ROW)
    assert "\n" not in line
    assert line.startswith("miner uid 3 window 812: loss 0.5123;")
    assert "gather 0.32 s 12,040 B" in line
    assert "success 50% (2/4)" in line
    # reasons are shortened to their status and slug, as in the localnet's table
    assert "skipped 2 invalid: header_too_large, 4 not_found" in line
    assert "upload ok 3,020 B in 0.04 s" in line
    assert "lag 0" in line and "cleaned 2" in line


def test_a_validator_window_is_one_line():
    line = window_line(VALIDATOR_ROW)
    assert line.startswith("validator uid 0 window 812: loss 0.8830 (before 0.9012);")
    assert "gather 0.11 s 11,686 B" in line
    assert "success 60% (3/5)" in line
    assert "skipped 4 invalid: header_too_large, 5 copy: copy_of_2" in line
    assert "aggregate 3 peers, published 3,404 B in 0.02 s" in line
    assert "lag 1" in line


def test_a_validator_without_an_aggregate_says_so():
    row = dict(VALIDATOR_ROW, aggregated=[], published_bytes=0, upload_seconds=None, skipped={})
    line = window_line(row)
    assert "skipped none" in line
    assert "aggregate 0 peers, published 0 B in -" in line


def test_text_lines_to_a_file_are_plain_and_never_wrapped(restore_logging):
    out = io.StringIO()  # not a terminal
    setup_logging("INFO", stream=out)
    WindowLog()(MINER_ROW)
    text = out.getvalue()
    assert text.count("\n") == 1, text
    assert f" INFO    {WINDOW_LOGGER}: miner uid 3 window 812:" in text
    assert len(text) > 200  # longer than a terminal's 80 columns, still one line


def test_json_lines_carry_time_level_logger_message_and_the_row(restore_logging):
    out = io.StringIO()
    setup_logging("INFO", fmt="json", stream=out)
    WindowLog()(VALIDATOR_ROW)
    logging.getLogger("neurons.neuron").warning("window %d failed, going on", 813)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "INFO"
    assert first["logger"] == WINDOW_LOGGER
    assert first["message"] == window_line(VALIDATOR_ROW)
    assert first["time"].endswith("+00:00")
    for key, value in VALIDATOR_ROW.items():
        assert first[key] == value
    assert second["message"] == "window 813 failed, going on"
    assert second["level"] == "WARNING" and second["logger"] == "neurons.neuron"


def test_json_lines_hold_exceptions(restore_logging):
    out = io.StringIO()
    setup_logging("INFO", fmt="json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("neurons.x").exception("failed")
    body = json.loads(out.getvalue())
    assert "RuntimeError: boom" in body["exception"]


def test_debug_is_ours_vendors_stay_at_warning_unless_asked(restore_logging):
    out = io.StringIO()
    setup_logging("DEBUG", stream=out)
    logging.getLogger("neurons.x").debug("ours")
    logging.getLogger("botocore.endpoint").debug("vendor request")
    logging.getLogger("some_unlisted_vendor").info("vendor info")
    logging.getLogger("botocore.endpoint").warning("vendor warning")
    text = out.getvalue()
    assert "ours" in text and "vendor warning" in text
    assert "vendor request" not in text and "vendor info" not in text

    out = io.StringIO()
    setup_logging("INFO", vendor_level="DEBUG", stream=out)
    logging.getLogger("botocore.endpoint").debug("vendor request")
    logging.getLogger("neurons.x").debug("ours at debug")
    assert "vendor request" in out.getvalue()
    assert "ours at debug" not in out.getvalue()


def test_setting_up_twice_replaces_our_handler_only(restore_logging):
    root = logging.getLogger()
    before = len(root.handlers)
    setup_logging("INFO", stream=io.StringIO())
    setup_logging("INFO", stream=io.StringIO())
    assert len(root.handlers) == before + 1


@pytest.mark.parametrize(
    "args",
    [["--log-format", "xml"], ["--log-level", "LOUD"], ["--vendor-log-level", "chatty"]],
)
def test_the_cli_refuses_unknown_log_options(args, restore_logging):
    result = CliRunner().invoke(app, ["miner", "--hotkey", "m", *args])
    assert result.exit_code == 2
    assert "must be one of" in result.output
