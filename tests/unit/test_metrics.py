"""The Prometheus metrics fed by window rows, and the endpoint's switch."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import generate_latest

from neurons.config import ConfigError, load_settings
from neurons.metrics import Metrics, observing, reason_slug
from tests.unit.test_logs import MINER_ROW, VALIDATOR_ROW


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


@pytest.mark.parametrize(
    ("reason", "slug"),
    [
        ("not_found", "not_found"),
        ("too_late", "too_late"),
        ("invalid: header_too_large", "invalid_header_too_large"),
        ("invalid: header_too_large: 8 MiB > 1 MiB", "invalid_header_too_large"),
        ("copy: copy_of_2", "copy"),
        ("error: timeout", "error_timeout"),
        ("error: TransientStorageError: connection reset by 10.0.0.1", "error"),
        ("invalid: bad_signature", "invalid_bad_signature"),
        ("Weird 123", "other"),
    ],
)
def test_a_skip_reason_becomes_a_bounded_label(reason, slug):
    assert reason_slug(reason) == slug


def test_a_miner_row_sets_every_metric():
    m = Metrics()
    m({"event": "ready", "role": "miner", "uid": 3})
    m(MINER_ROW)
    assert _value(m, "templar_neuron_info", role="miner", uid="3") == 1
    assert _value(m, "templar_windows_total") == 1
    assert _value(m, "templar_last_window") == 812
    assert _value(m, "templar_window_lag") == 0
    assert _value(m, "templar_gather_seconds_count") == 1
    assert _value(m, "templar_gather_seconds_sum") == pytest.approx(0.318)
    assert _value(m, "templar_gather_bytes") == 12040
    assert _value(m, "templar_download_bytes_total") == 12040
    assert _value(m, "templar_gather_success_rate") == 0.5
    assert _value(m, "templar_skipped_peers_total", reason="invalid_header_too_large") == 1
    assert _value(m, "templar_skipped_peers_total", reason="not_found") == 1
    assert _value(m, "templar_upload_seconds_sum") == pytest.approx(0.0412)
    assert _value(m, "templar_upload_bytes") == 3020
    assert _value(m, "templar_loss") == pytest.approx(0.51234)
    assert _value(m, "templar_window_seconds_count") == 1


def test_validator_rows_accumulate_and_failures_count():
    m = Metrics()
    m(VALIDATOR_ROW)
    m(dict(VALIDATOR_ROW, window=813, window_lag=2, upload_seconds=None))
    m({"event": "window_failed", "role": "validator", "uid": 0, "window": 814, "reason": "x"})
    assert _value(m, "templar_windows_total") == 2
    assert _value(m, "templar_failed_windows_total") == 1
    assert _value(m, "templar_last_window") == 813
    assert _value(m, "templar_window_lag") == 2
    assert _value(m, "templar_download_bytes_total") == 2 * 11686
    assert _value(m, "templar_skipped_peers_total", reason="copy") == 2
    assert _value(m, "templar_upload_seconds_count") == 1  # no aggregate, no upload time
    assert _value(m, "templar_upload_bytes") == 3404
    assert _value(m, "templar_loss") == pytest.approx(0.8830)
    text = generate_latest(m.registry).decode()
    assert "copy_of" not in text  # no uid in a label


class _Neuron:
    def __init__(self) -> None:
        self.rows: list = []
        self.on_row = self.rows.append


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_observing_serves_on_loopback_and_restores_the_hook():
    neuron = _Neuron()
    original = neuron.on_row
    port = _free_port()
    with observing(neuron, port) as metrics:
        assert metrics is not None
        neuron.on_row(MINER_ROW)
        assert neuron.rows == [MINER_ROW]  # the events file still gets every row
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        assert "templar_windows_total 1.0" in body
    assert neuron.on_row is original
    with pytest.raises(OSError), urllib.request.urlopen(url, timeout=2):
        pass


def test_no_port_no_server():
    neuron = _Neuron()
    with observing(neuron, 0) as metrics:
        assert metrics is None
        neuron.on_row(MINER_ROW)
    assert neuron.rows == [MINER_ROW]


def test_a_port_in_use_is_a_configuration_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="metrics_port"), observing(_Neuron(), port):
            pass


def test_metrics_port_has_its_variable_and_a_range():
    assert load_settings({}).metrics_port == 0
    assert load_settings({"TEMPLAR_METRICS_PORT": "9100"}).metrics_port == 9100
    assert load_settings({"TEMPLAR_METRICS_PORT": "9100"}, {"metrics_port": 9200}).metrics_port == (
        9200
    )
    with pytest.raises(ConfigError, match="metrics_port"):
        load_settings({"TEMPLAR_METRICS_PORT": "70000"})
