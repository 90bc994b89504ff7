"""Object names of both protocol profiles: golden Templar names, round trips, no aliasing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import keys
from core.keys import KeyKind
from core.profiles import NATIVE, PROFILES, TEMPLAR, profile
from core.templar.keys import TemplarKeys

windows = st.integers(min_value=0, max_value=2**40)
uids = st.integers(min_value=0, max_value=2**16 - 1)
versions = st.from_regex(r"\A[0-9A-Za-z][0-9A-Za-z.+_-]{0,20}\Z")
schemes = st.sampled_from([p.keys for p in PROFILES.values()])


# Templar's names, as its current main writes them (src/tplr/comms.py at c2397ac; release
# 2.1.3): docs/templar.md, "Keys and objects".
@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (TEMPLAR.keys.gradient(51802, 7, "2.1.3"), "gradient-51802-7-v2.1.3.pt"),
        (TEMPLAR.keys.debug(51802, 7, "2.1.3"), "debug-51802-7-v2.1.3.pt"),
        (TEMPLAR.keys.aggregator(51802, "2.1.3"), "aggregator-51802-v2.1.3.pt"),
        (TEMPLAR.keys.peers(51803, "2.1.3"), "peers_51803_v2.1.3.json"),
        (TEMPLAR.keys.start_window("2.1.3"), "start_window_v2.1.3.json"),
        (NATIVE.keys.gradient(51802, 7, "1"), "gradient-51802-7-v1.safetensors"),
        (NATIVE.keys.peers(51803, "1"), "peers-51803-v1.json"),
        (NATIVE.keys.start_window("1"), "start_window-v1.json"),
    ],
)
def test_golden_names(made: str, expected: str) -> None:
    assert made == expected


def test_templar_has_no_peer_list_pointer_and_lists_by_its_own_prefix() -> None:
    assert TEMPLAR.keys.peers_latest("2.1.3") is None
    assert TEMPLAR.keys.peers(5, "2.1.3").startswith(TEMPLAR.keys.peers_prefix)
    assert NATIVE.keys.peers(5, "1").startswith(NATIVE.keys.peers_prefix)
    assert NATIVE.keys.peers_latest("1") == "peers-latest-v1.json"


@given(schemes, windows, uids, versions)
def test_every_name_parses_back_to_its_parts(scheme, window: int, uid: int, version: str) -> None:
    made = {
        KeyKind.GRADIENT: scheme.gradient(window, uid, version),
        KeyKind.DEBUG: scheme.debug(window, uid, version),
        KeyKind.AGGREGATOR: scheme.aggregator(window, version),
        KeyKind.PEERS: scheme.peers(window, version),
        KeyKind.START_WINDOW: scheme.start_window(version),
    }
    for kind, key in made.items():
        parsed = scheme.parse(key)
        assert parsed is not None and parsed.kind is kind and parsed.version == version
        if kind is not KeyKind.START_WINDOW:
            assert parsed.window == window
        if kind in (KeyKind.GRADIENT, KeyKind.DEBUG):
            assert parsed.uid == uid
    for kind in (KeyKind.GRADIENT, KeyKind.AGGREGATOR, KeyKind.PEERS):
        assert scheme.for_kind(kind, window, version, uid) == made[kind]


@given(windows, uids, versions)
def test_one_profile_never_reads_the_others_names(window: int, uid: int, version: str) -> None:
    for writer, reader in ((NATIVE.keys, TEMPLAR.keys), (TEMPLAR.keys, NATIVE.keys)):
        for key in (
            writer.gradient(window, uid, version),
            writer.debug(window, uid, version),
            writer.aggregator(window, version),
            writer.peers(window, version),
            writer.start_window(version),
        ):
            assert reader.parse(key) is None


@given(windows, uids, versions)
def test_our_checkpoints_are_named_and_parsed_alike_in_both_profiles(
    window: int, uid: int, version: str
) -> None:
    key = keys.checkpoint_manifest(window, uid, version)
    assert TEMPLAR.keys.parse(key) == NATIVE.keys.parse(key) == keys.parse(key)
    assert TEMPLAR.keys.parse(key).kind is KeyKind.CHECKPOINT


@pytest.mark.parametrize(
    "name",
    [
        "gradient-01-7-v2.1.3.pt",  # a leading zero would give one window two names
        "gradient-1-07-v2.1.3.pt",
        "gradient-1-7-v2.1.3.pt.tmp",
        "gradient-1-7-2.1.3.pt",
        "gradient--1-7-v2.1.3.pt",
        "peers_05_v2.1.3.json",
        "peers-5-v2.1.3.json",
        "start_window_v.json",
        "start_window_v2.1.3.json/x",
        "checkpoints/2.1.3/_LATEST.json",  # Templar's checkpoint pointer: not ours to sweep
        "checkpoints/2.1.3/51800/.metadata",
        "aggregator-5-v2.1.3.safetensors",
    ],
)
def test_names_templar_does_not_write_here_are_not_recognised(name: str) -> None:
    assert TEMPLAR.keys.parse(name) is None


@given(st.text(max_size=80))
def test_parse_never_raises(text: str) -> None:
    for scheme in (NATIVE.keys, TEMPLAR.keys):
        scheme.parse(text)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.gradient(-1, 0, "1"),
        lambda s: s.gradient(0, True, "1"),
        lambda s: s.peers(0, "bad/version"),
        lambda s: s.start_window(""),
        lambda s: s.for_kind(KeyKind.GRADIENT, 1, "1"),
        lambda s: s.for_kind(KeyKind.START_WINDOW, 1, "1"),
    ],
)
def test_bad_parts_are_refused_by_both_schemes(call) -> None:
    for scheme in (NATIVE.keys, TemplarKeys()):
        with pytest.raises(ValueError):
            call(scheme)


def test_profiles_are_looked_up_by_name() -> None:
    assert profile("templar") is TEMPLAR and profile("native") is NATIVE
    with pytest.raises(ValueError, match="native, templar"):
        profile("bittensor")
