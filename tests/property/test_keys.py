"""Object names round-trip through `core.keys.parse`, and every name is a safe object key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import keys
from core.keys import KeyKind, ParsedKey
from ports import InvalidKey, check_key

ints = st.integers(min_value=0, max_value=10**12)
versions = st.from_regex(r"\A[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}\Z")
files = st.from_regex(r"\A[0-9A-Za-z][0-9A-Za-z._-]{0,40}\Z")


@given(ints, ints, versions)
def test_gradient_round_trip(window: int, uid: int, version: str) -> None:
    key = check_key(keys.gradient(window, uid, version))
    assert keys.parse(key) == ParsedKey(KeyKind.GRADIENT, version, window, uid)


@given(ints, versions)
def test_aggregator_peers_and_start_window_round_trip(window: int, version: str) -> None:
    assert keys.parse(keys.aggregator(window, version)) == ParsedKey(
        KeyKind.AGGREGATOR, version, window
    )
    assert keys.parse(keys.peers(window, version)) == ParsedKey(KeyKind.PEERS, version, window)
    assert keys.parse(keys.start_window(version)) == ParsedKey(KeyKind.START_WINDOW, version)


@given(ints, ints, versions, files)
def test_checkpoint_round_trip(window: int, uid: int, version: str, file: str) -> None:
    key = check_key(keys.checkpoint_file(window, uid, version, file))
    assert key.startswith(keys.checkpoint_prefix(version))
    assert keys.parse(key) == ParsedKey(KeyKind.CHECKPOINT, version, window, uid, file)
    manifest = keys.parse(keys.checkpoint_manifest(window, uid, version))
    assert manifest is not None and manifest.file == keys.MANIFEST


@given(ints, ints, versions, versions)
def test_versions_never_collide(window: int, uid: int, v1: str, v2: str) -> None:
    if v1 != v2:
        assert keys.gradient(window, uid, v1) != keys.gradient(window, uid, v2)


def test_known_names() -> None:
    assert keys.gradient(12, 3, "1.0.0") == "gradient-12-3-v1.0.0.safetensors"
    assert keys.aggregator(12, "1.0.0") == "aggregator-12-v1.0.0.safetensors"
    assert keys.peers(12, "1.0.0") == "peers-12-v1.0.0.json"
    assert keys.start_window("1.0.0") == "start_window-v1.0.0.json"
    assert keys.checkpoint_manifest(12, 3, "1.0.0") == "checkpoints/v1.0.0/12-3/manifest.json"


@pytest.mark.parametrize(
    "key",
    [
        "gradient-01-3-v1.safetensors",  # non-canonical number
        "gradient-1-3-v1.safetensors\n",
        "gradient-\u0661-3-v1.safetensors",  # ARABIC-INDIC DIGIT ONE: not an ASCII digit
        "gradient-1-3-v.safetensors",
        "gradient-1--3-v1.safetensors",
        "peers-1-v1.json.bak",
        "checkpoints/v1/1-2/../manifest.json",
        "checkpoints/v1/1-2/sub/manifest.json",
        "random.bin",
        "",
    ],
)
def test_foreign_names_parse_to_none(key: str) -> None:
    assert keys.parse(key) is None


@pytest.mark.parametrize(
    "bad",
    [
        lambda: keys.gradient(-1, 0, "1"),
        lambda: keys.gradient(0, True, "1"),
        lambda: keys.gradient(0, 0, "1/2"),
        lambda: keys.gradient(0, 0, ""),
        lambda: keys.peers(0, "../x"),
        lambda: keys.checkpoint_file(0, 0, "1", "../manifest.json"),
        lambda: keys.checkpoint_file(0, 0, "1", "a/b"),
    ],
)
def test_bad_parts_are_rejected(bad) -> None:
    with pytest.raises(ValueError):
        bad()


@given(st.text(max_size=60))
def test_parse_never_raises(text: str) -> None:
    keys.parse(text)


@given(st.text(max_size=80))
def test_check_key_accepts_only_safe_names(text: str) -> None:
    try:
        check_key(text)
    except InvalidKey:
        return
    segments = text.split("/")
    assert text and not text.startswith("/") and "\x00" not in text and "\\" not in text
    assert all(s not in ("", ".", "..") for s in segments)
