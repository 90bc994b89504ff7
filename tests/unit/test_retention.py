"""The retention rules on names alone: a retention per kind, never the newest of a kind and
version, our start window never, another version's once that version has gone quiet."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import keys
from core.keys import KeyKind
from core.retention import ALL_KINDS, PER_WINDOW, RetentionPolicy, stale

OURS, OLD = "2", "1"


def named(*names: str) -> list[tuple[str, keys.ParsedKey]]:
    return [(n, keys.parse(n)) for n in names]


def test_each_kind_has_its_own_retention_defaulting_to_stale_retention() -> None:
    policy = RetentionPolicy(stale_retention=4, peer_list_retention=7, kinds=PER_WINDOW)
    assert policy.retention(KeyKind.GRADIENT) == 4
    assert policy.retention(KeyKind.DEBUG) == 4
    assert policy.retention(KeyKind.PEERS) == 7
    objects = named(*(keys.peers(w, OURS) for w in range(20)), keys.gradient(19, 1, OURS))
    objects += named(*(keys.gradient(w, 1, OURS) for w in range(10)))
    gone = {k for _, k in stale(objects, 20, policy)}
    assert gone == {keys.peers(w, OURS) for w in range(13)} | {
        keys.gradient(w, 1, OURS) for w in range(10)
    }


def test_the_newest_of_each_kind_and_version_stays_however_old() -> None:
    policy = RetentionPolicy(stale_retention=1, kinds=PER_WINDOW)
    objects = named(
        keys.peers(3, OURS), keys.peers(5, OURS), keys.peers(4, OLD),
        keys.aggregator(2, OURS), keys.gradient(5, 1, OURS), keys.gradient(5, 2, OURS),
    )  # fmt: skip
    assert stale(objects, 1000, policy) == [(3, keys.peers(3, OURS))]


def test_start_windows_ours_never_anothers_once_its_version_is_quiet() -> None:
    policy = RetentionPolicy(start_window_retention=10, kinds=ALL_KINDS, version=OURS)
    objects = named(
        keys.start_window(OURS), keys.start_window(OLD), keys.start_window("3"),
        keys.peers(89, OLD),
    )  # fmt: skip
    assert stale(objects, 100, policy) == [(89, keys.start_window(OLD))]
    assert stale(objects, 99, policy) == []  # window 89 is inside the last 10 windows
    # Version 3 has written nothing but its start window: it may be a release just starting.
    assert all(k != keys.start_window("3") for _, k in stale(objects, 10**6, policy))
    # A checkpoint counts as activity too.
    objects += named(keys.checkpoint_manifest(95, 0, OLD))
    assert stale(objects, 100, policy) == []


def test_policy_refuses_what_it_cannot_do_safely() -> None:
    with pytest.raises(ValueError, match="checkpoints"):
        RetentionPolicy(kinds={KeyKind.CHECKPOINT})
    with pytest.raises(ValueError, match="version"):
        RetentionPolicy(kinds=ALL_KINDS)
    with pytest.raises(ValueError):
        RetentionPolicy(peer_list_retention=-1)


KINDS = st.sampled_from(sorted(PER_WINDOW, key=lambda k: k.value))


def key_of(kind: KeyKind, window: int, uid: int, version: str) -> str:
    return keys.debug(window, uid, version) if kind is KeyKind.DEBUG else (
        keys.for_kind(kind, window, version, uid)
    )  # fmt: skip


@given(
    objects=st.lists(
        st.tuples(KINDS, st.integers(0, 60), st.integers(0, 3), st.sampled_from([OURS, OLD])),
        max_size=40,
    ),
    current=st.integers(0, 80),
    retentions=st.tuples(*[st.integers(0, 30)] * 4),
    swept=st.sets(KINDS),
)
def test_stale_is_exactly_old_and_not_newest(objects, current, retentions, swept) -> None:
    stale_r, debug_r, peers_r, agg_r = retentions
    policy = RetentionPolicy(
        stale_retention=stale_r, debug_retention=debug_r, peer_list_retention=peers_r,
        aggregate_retention=agg_r, kinds=swept,
    )  # fmt: skip
    names = {key_of(*o) for o in objects}
    out = stale(named(*names), current, policy)
    assert out == sorted(out)  # oldest first, for bounded passes
    parsed = {k: keys.parse(k) for k in names}
    newest = {}
    for p in parsed.values():
        newest[p.kind, p.version] = max(newest.get((p.kind, p.version), -1), p.window)
    expect = {
        k for k, p in parsed.items()
        if p.kind in swept
        and p.window < current - policy.retention(p.kind)
        and p.window < newest[p.kind, p.version]
    }  # fmt: skip
    assert {k for _, k in out} == expect
