"""Prometheus metrics of one neuron, fed by the rows its windows return.

Opt-in (`metrics_port`, 0: off) and bound to 127.0.0.1 only: the endpoint has no
authentication, so a scraper on another machine reaches it through an agent on this one or
a tunnel, never through an open port. Each `Metrics` has its own registry, so tests (and
several neurons in one process) never collide in prometheus-client's global one.

Labels stay bounded: a skip reason is reduced to its slug (`invalid_header_too_large`,
`copy`), never a uid or an error message, so a hostile peer cannot grow the series count.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from neurons.config import ConfigError
from neurons.localnet_view import short_reason
from neurons.logs import WindowLog

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Windows last seconds to minutes; gathers and uploads from milliseconds to a minute.
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
_WORD = re.compile(r"^[a-z_]+$")


def reason_slug(reason: str) -> str:
    """A skip reason as a label value: its words, without uids, numbers or free text."""
    words = [t for t in short_reason(reason).split(": ") if _WORD.match(t)]
    return "_".join(dict.fromkeys(words)) or "other"


class Metrics:
    """The per-window metrics; `__call__` is an `on_row` consumer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.info = Gauge(
            "templar_neuron_info",
            "this neuron's role and uid (value 1)",
            ["role", "uid"],
            registry=r,
        )
        self.windows = Counter("templar_windows", "windows completed", registry=r)
        self.failed = Counter(
            "templar_failed_windows", "windows that failed (the process went on)", registry=r
        )
        self.last_window = Gauge("templar_last_window", "the window finished last", registry=r)
        self.lag = Gauge(
            "templar_window_lag",
            "the chain's current window minus the window just finished",
            registry=r,
        )
        self.window_seconds = Histogram(
            "templar_window_seconds", "seconds one window's work took", buckets=SECONDS_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.gather_seconds = Histogram(
            "templar_gather_seconds", "seconds the gather of a window took",
            buckets=SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.gather_bytes = Gauge(
            "templar_gather_bytes", "bytes downloaded by the last window's gather", registry=r
        )
        self.download_bytes = Counter(
            "templar_download_bytes", "bytes downloaded by gathers", registry=r
        )
        self.success_rate = Gauge(
            "templar_gather_success_rate", "valid peers / peers asked, last window", registry=r
        )
        self.skipped = Counter(
            "templar_skipped_peers", "peers skipped by a gather, by reason", ["reason"], registry=r
        )
        self.upload_seconds = Histogram(
            "templar_upload_seconds",
            "seconds an upload took (a miner's gradient, a validator's aggregate)",
            buckets=SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.upload_bytes = Gauge(
            "templar_upload_bytes", "bytes of the last window's upload", registry=r
        )
        self.loss = Gauge(
            "templar_loss",
            "a miner's training loss, a validator's held-out loss after the aggregate",
            registry=r,
        )

    def __call__(self, row: Mapping[str, Any]) -> None:
        event = row.get("event")
        if event == "ready":
            self.info.labels(str(row.get("role")), str(row.get("uid"))).set(1)
        elif event == "window_failed":
            self.failed.inc()
        elif event == "window":
            self._window(row)

    def _window(self, row: Mapping[str, Any]) -> None:
        validator = row.get("role") == "validator"
        self.windows.inc()
        self.last_window.set(row["window"])
        if row.get("window_lag") is not None:
            self.lag.set(row["window_lag"])
        if row.get("seconds") is not None:
            self.window_seconds.observe(row["seconds"])
        self.gather_seconds.observe(row.get("gather_seconds", 0.0))
        nbytes = row.get("bytes" if validator else "download_bytes", 0)
        self.gather_bytes.set(nbytes)
        self.download_bytes.inc(nbytes)
        self.success_rate.set(row.get("success_rate", 0.0))
        for reason in row.get("skipped", {}).values():
            self.skipped.labels(reason_slug(reason)).inc()
        if row.get("upload_seconds") is not None:
            self.upload_seconds.observe(row["upload_seconds"])
        self.upload_bytes.set(row.get("published_bytes" if validator else "upload_bytes", 0))
        loss = row.get("loss" if validator else "train_loss")
        if loss is not None:
            self.loss.set(loss)

    def serve(self, port: int) -> MetricsServer:
        """Serve /metrics on 127.0.0.1:`port` in a daemon thread until `close()`."""
        server, thread = start_http_server(port, addr=LOOPBACK, registry=self.registry)
        return MetricsServer(server, thread)


class MetricsServer:
    def __init__(self, server: Any, thread: Any) -> None:
        self._server, self._thread = server, thread

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


Row = Mapping[str, Any]


class Observed(Protocol):
    on_row: Callable[[Row], None] | None


def _fan_out(*consumers: Callable[[Row], None] | None) -> Callable[[Row], None]:
    live = [c for c in consumers if c is not None]

    def on_row(row: Row) -> None:
        for consumer in live:
            consumer(row)

    return on_row


@contextlib.contextmanager
def observing(neuron: Observed, metrics_port: int = 0) -> Iterator[Metrics | None]:
    """While inside: each row of `neuron` is also logged (one INFO line per window) and, with
    a `metrics_port`, counted in metrics served on 127.0.0.1:`metrics_port`."""
    metrics = Metrics() if metrics_port else None
    try:
        server = metrics.serve(metrics_port) if metrics is not None else None
    except OSError as exc:
        raise ConfigError(
            "metrics_port", f"cannot serve metrics on {LOOPBACK}:{metrics_port}: {exc.strerror}"
        ) from None
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", LOOPBACK, server.port)
    previous = neuron.on_row
    neuron.on_row = _fan_out(previous, WindowLog(), metrics)
    try:
        yield metrics
    finally:
        neuron.on_row = previous
        if server is not None:
            server.close()
