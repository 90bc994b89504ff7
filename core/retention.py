"""What the janitor may delete, decided from object names alone (no I/O): docs/checkpoints.md,
"Retention".

- A per-window object (gradient, debug dict, peer list, aggregate) of a swept kind is stale
  when its window is older than `current_window - retention(kind)`, unless it is the newest of
  its kind and version in the bucket: a validator that stopped publishing still leaves its
  last peer list and aggregate for readers, and a bucket holds at most one such straggler per
  kind and version.
- A start window has no window of its own; one object per version. Our version's is never
  stale. Another version's goes once that version's newest per-window object in the bucket is
  older than `current_window - start_window_retention` (the release has stopped writing
  here); a version with nothing but its start window keeps it, since it may be a release
  that is just starting.
- Checkpoints follow their own rule (core/janitor.py), but count as a version's activity.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from attrs.validators import ge, gt, optional

from core.keys import KeyKind, ParsedKey

__all__ = ["ALL_KINDS", "PER_WINDOW", "RetentionPolicy", "stale"]

PER_WINDOW = frozenset({KeyKind.GRADIENT, KeyKind.DEBUG, KeyKind.PEERS, KeyKind.AGGREGATOR})
ALL_KINDS = PER_WINDOW | {KeyKind.START_WINDOW}
_windows = optional(ge(0))


@attrs.frozen(kw_only=True)
class RetentionPolicy:
    """Windows each kind is kept; a kind-specific retention of None is `stale_retention`."""

    stale_retention: int = attrs.field(default=10, validator=ge(0))
    debug_retention: int | None = attrs.field(default=None, validator=_windows)
    peer_list_retention: int | None = attrs.field(default=None, validator=_windows)
    # Catch-up replays aggregates, so they must outlive checkpoint_frequency +
    # sync_max_steps_behind windows (neurons/config.py refuses less).
    aggregate_retention: int | None = attrs.field(default=None, validator=_windows)
    start_window_retention: int | None = attrs.field(default=None, validator=_windows)
    keep_checkpoints: int = attrs.field(default=3, validator=gt(0))
    max_deletes: int = attrs.field(default=1000, validator=gt(0))
    kinds: frozenset[KeyKind] = attrs.field(
        default=frozenset({KeyKind.GRADIENT, KeyKind.DEBUG}), converter=frozenset
    )
    # Our protocol version: its start window is never deleted. Needed to sweep start windows.
    version: str | None = None

    def __attrs_post_init__(self) -> None:
        if KeyKind.CHECKPOINT in self.kinds:
            raise ValueError("checkpoints follow their own rule (keep_checkpoints)")
        if KeyKind.START_WINDOW in self.kinds and self.version is None:
            raise ValueError("sweeping start windows needs our version, whose one must stay")

    def retention(self, kind: KeyKind) -> int:
        own = {
            KeyKind.DEBUG: self.debug_retention,
            KeyKind.PEERS: self.peer_list_retention,
            KeyKind.AGGREGATOR: self.aggregate_retention,
            KeyKind.START_WINDOW: self.start_window_retention,
        }.get(kind)
        return self.stale_retention if own is None else own


def stale(
    objects: Iterable[tuple[str, ParsedKey]], current_window: int, policy: RetentionPolicy
) -> list[tuple[int, str]]:
    """(window, key) of every non-checkpoint object `policy` lets go, oldest first; a start
    window is placed at its version's last active window."""
    objects = list(objects)
    newest: dict[tuple[KeyKind, str], int] = {}
    active: dict[str, int] = {}
    for _key, p in objects:
        if p.window is None:
            continue
        active[p.version] = max(active.get(p.version, p.window), p.window)
        if p.kind in PER_WINDOW:
            group = (p.kind, p.version)
            newest[group] = max(newest.get(group, p.window), p.window)
    out: list[tuple[int, str]] = []
    for key, p in objects:
        if p.kind not in policy.kinds:
            continue
        cutoff = current_window - policy.retention(p.kind)
        if p.kind is KeyKind.START_WINDOW:
            last = active.get(p.version)
            if p.version != policy.version and last is not None and last < cutoff:
                out.append((last, key))
        elif p.window is not None and p.window < cutoff and p.window < newest[(p.kind, p.version)]:
            out.append((p.window, key))
    out.sort()
    return out
