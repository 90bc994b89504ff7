"""Logging for a neuron process: handlers, vendor levels, and the one line per window.

`setup_logging` is called once by the CLI. Text goes through rich only when stderr is a
terminal; a file or a pipe gets plain, unwrapped lines (rich wraps at 80 columns when it
cannot measure a terminal). `--log-format json` writes one JSON object per line, and a window's
line carries every field of the neuron's row, so a log shipper needs no parsing.

Vendor libraries (boto3 and botocore log every request at DEBUG, with headers) stay at their
own level, WARNING by default, whatever `--log-level` says: DEBUG is for our code.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from neurons.localnet_view import short_reason

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
VENDOR_LOGGERS = (
    "asyncio",
    "async_substrate_interface",
    "bittensor",
    "bittensor_wallet",
    "boto3",
    "botocore",
    "filelock",
    "fsspec",
    "matplotlib",
    "numba",
    "PIL",
    "rlp",
    "s3transfer",
    "scalecodec",
    "urllib3",
    "websockets",
)
# Our packages' loggers: `--log-level` is theirs; everything else logs at the vendor level.
OWN_LOGGERS = ("core", "ports", "adapters", "neurons", "bench", "templar", "__main__")
# The logger of the per-window lines, so an operator can filter them (or silence them).
WINDOW_LOGGER = "templar.window"
# LogRecord attributes that are not extra fields.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the record's `row`."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        row = getattr(record, "row", None)
        extra = row if isinstance(row, Mapping) else {}
        for key, value in extra.items():
            body.setdefault(str(key), value)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key != "row":
                body.setdefault(key, value)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, separators=(",", ":"), default=str)


PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (a test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class LevelSplit(logging.Filter):
    """Our loggers pass from `level`, every other (a vendor's) from `vendor_level`."""

    def __init__(self, level: int, vendor_level: int) -> None:
        super().__init__()
        self.level, self.vendor_level = level, vendor_level

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".", 1)[0] in OWN_LOGGERS
        return record.levelno >= (self.level if own else self.vendor_level)


def _handler(fmt: str, stream: TextIO | None) -> logging.Handler:
    out = stream or sys.stderr
    if fmt == "text" and out.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        return RichHandler(console=Console(file=out), show_path=False)
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT))
    return handler


def setup_logging(
    level: str = "WARNING",
    *,
    fmt: str = "text",
    vendor_level: str = "WARNING",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Root logging for a neuron process (stderr unless `stream`); returns its handler.

    Called again, it replaces its own handler and leaves any other (a test runner's) alone.
    """
    level, vendor_level = level.upper(), vendor_level.upper()
    for name, value, choices in (
        ("--log-level", level, LEVELS),
        ("--vendor-log-level", vendor_level, LEVELS),
        ("--log-format", fmt, FORMATS),
    ):
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    handler = _handler(fmt, stream)
    numeric, vendor_numeric = logging.getLevelName(level), logging.getLevelName(vendor_level)
    handler.addFilter(LevelSplit(numeric, vendor_numeric))
    handler._templar = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_templar", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(numeric, vendor_numeric))
    # Their own records are not even made below the vendor level (botocore's DEBUG is costly).
    quiet_vendors(vendor_level)
    return handler


def quiet_vendors(level: str = "WARNING") -> None:
    """Set the known vendor loggers to `level`: some SDKs set their own level on import."""
    for name in VENDOR_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


# The per-window line ----------------------------------------------------------------------


def _skipped(skipped: Mapping[str, str]) -> str:
    return ", ".join(f"{uid} {short_reason(why)}" for uid, why in skipped.items()) or "none"


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.2f} s"


def window_line(row: Mapping[str, Any]) -> str:
    """One window of a miner or a validator as one line of text."""
    role = row.get("role", "neuron")
    head = f"{role} uid {row.get('uid')} window {row.get('window')}"
    lag = row.get("window_lag")
    if role == "validator":
        loss = f"loss {row['loss']:.4f} (before {row['loss_before']:.4f})"
        nbytes = row.get("bytes", 0)
        success = f"success {row['success_rate']:.0%} ({row.get('valid', 0)}/{row.get('asked', 0)})"
        published = row.get("published_bytes", 0)
        upload = (
            f"aggregate {len(row.get('aggregated', []))} peers, "
            f"published {published:,} B in {_seconds(row.get('upload_seconds'))}"
        )
    else:
        loss = f"loss {row['train_loss']:.4f}"
        nbytes = row.get("download_bytes", 0)
        success = (
            f"success {row['success_rate']:.0%} "
            f"({len(row.get('gathered', []))}/{len(row.get('peers', []))})"
        )
        upload = (
            f"upload {row.get('upload')} {row.get('upload_bytes', 0):,} B "
            f"in {_seconds(row.get('upload_seconds'))}"
        )
    parts = [
        loss,
        f"gather {_seconds(row.get('gather_seconds'))} {nbytes:,} B",
        success,
        f"skipped {_skipped(row.get('skipped', {}))}",
        upload,
        f"window took {_seconds(row.get('seconds'))}",
    ]
    if lag is not None:
        parts.append(f"lag {lag}")
    if row.get("cleaned"):
        parts.append(f"cleaned {row['cleaned']}")
    return f"{head}: " + "; ".join(parts)


class WindowLog:
    """The `on_row` consumer that logs each finished window at INFO, the row attached."""

    def __init__(self) -> None:
        self.log = logging.getLogger(WINDOW_LOGGER)

    def __call__(self, row: Mapping[str, Any]) -> None:
        event = row.get("event")
        if event == "window":
            self.log.info("%s", window_line(row), extra={"row": dict(row)})
        elif event == "ready":
            self.log.info(
                "%s uid %s ready", row.get("role"), row.get("uid"), extra={"row": dict(row)}
            )
        # window_failed: the neuron has logged its WARNING already (neurons/neuron.py).
