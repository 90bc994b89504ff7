"""Which peers a validator evaluates in a window: a rotation with a proven bound.

Scoring a gradient costs the validator a forward and backward pass on held-out batches,
so it evaluates `uids_per_window` peers a window, not every miner. `ActivityTracker.eval_peers`
keeps, for each eligible peer, how many windows it has waited since it was last evaluated
(Templar's counter); each window the longest-waiting peers are evaluated and their count
starts again.

The bound: with N distinct uids and k evaluated a window, a peer that stays eligible for
ceil(N / k) consecutive windows is evaluated in one of them. While it waits, a peer chosen
ahead of it had waited at least as long; once chosen, that peer's count restarts below the
waiting peer's and stays below it, and a peer that joins starts at zero, so each other uid
goes ahead of it at most once, k of them a window. `tests/property/test_eval_rotation.py`
checks the bound on random networks with churn.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping


def choose_for_evaluation(
    waits: Mapping[int, int], per_window: int, window: int, seed: int = 0
) -> tuple[int, ...]:
    """The `per_window` longest-waiting uids of `waits`; equal waits are drawn at random.

    The draw is seeded by (seed, window), so a validator's choice can be reproduced.
    """
    if per_window <= 0:
        return ()
    uids = sorted(waits)
    random.Random(f"eval:{seed}:{window}").shuffle(uids)
    uids.sort(key=lambda uid: -waits[uid])  # stable: the shuffle breaks the ties
    return tuple(uids[:per_window])


def after_evaluation(waits: Mapping[int, int], evaluated: Iterable[int]) -> dict[int, int]:
    """The counts one window later: the evaluated start again at zero, the others wait one more.

    A chosen peer counts as evaluated whether it uploaded or was penalised for not uploading,
    so a peer cannot hold its place at the head of the rotation by going missing.
    """
    done = set(evaluated)
    return {uid: 0 if uid in done else n + 1 for uid, n in waits.items()}


def rotation_bound(uids: int, per_window: int) -> int:
    """Windows within which a continuously eligible peer is evaluated (see the module doc)."""
    return -(-uids // per_window)
