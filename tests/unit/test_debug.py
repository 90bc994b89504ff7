"""Miners' debug objects: round trip through a store, strict parsing of hostile bodies."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStore
from core import keys
from core.debug import (
    MAX_DEBUG_BYTES,
    DebugReport,
    GatherSummary,
    InvalidDebug,
    get_debug,
    parse_debug,
    post_debug,
)
from ports import TooLarge

V = "1"
REPORT = DebugReport(
    window=7,
    uid=3,
    step=6,
    loss=0.25,
    upload_bytes=500_348,
    gather=GatherSummary(asked=4, used=3, skipped=1, seconds=0.5),
)


async def test_a_posted_report_reads_back_equal() -> None:
    store = MemoryStore("b", FakeClock())
    await post_debug(store, REPORT, V)
    assert await get_debug(store, 7, 3, V) == REPORT


async def test_a_report_under_another_windows_key_is_refused() -> None:
    store = MemoryStore("b", FakeClock())
    await store.put(keys.debug(8, 3, V), REPORT.to_json(V))
    with pytest.raises(InvalidDebug, match="names window 7"):
        await get_debug(store, 8, 3, V)


async def test_an_oversized_object_is_refused_before_download() -> None:
    store = MemoryStore("b", FakeClock())
    await store.put(keys.debug(7, 3, V), b" " * (MAX_DEBUG_BYTES + 1))
    with pytest.raises(TooLarge):
        await get_debug(store, 7, 3, V)


def _body(**changes: object) -> bytes:
    body = json.loads(REPORT.to_json(V))
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (_body(extra=1), "keys are"),
        (_body(schema=2), "schema"),
        (_body(version="2"), "schema"),
        (_body(window=-1), "window must be"),
        (_body(step=True), "step must be"),
        (_body(upload_bytes=2**60), "upload_bytes must be"),
        (_body(loss="low"), "loss must be"),
        (b'{"loss": 1e999}', "keys are"),
        (_body(gather={"asked": 1}), "gather keys are"),
        (REPORT.to_json(V)[:-1] + b',"uid":4}', "duplicate key"),
    ],
)
def test_hostile_bodies_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidDebug, match=reason):
        parse_debug(data, V)


def test_infinite_loss_is_refused() -> None:
    body = REPORT.to_json(V).replace(b'"loss":0.25', b'"loss":Infinity')
    with pytest.raises(InvalidDebug, match="loss must be a finite number"):
        parse_debug(body, V)


@given(st.binary(max_size=MAX_DEBUG_BYTES))
def test_any_bytes_parse_or_raise_invalid_debug(data: bytes) -> None:
    with contextlib.suppress(InvalidDebug):
        parse_debug(data, V)
