"""Which corpus pages a miner trains on in a window, and which a validator evaluates on.

Pure functions of (seed, window, uid): a validator recomputes any miner's pages, and no two
processes need to talk to agree. The last `held_out` pages are never trained on.
"""

from __future__ import annotations

import numpy as np

_EVAL_STREAM = 2**31 - 1  # not a uid: uids are below 2**16


def _rng(seed: int, window: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, window, stream])


def train_pages(
    seed: int, window: int, uid: int, count: int, pages: int, held_out: int
) -> list[int]:
    """`count` distinct training pages (with repeats only when count exceeds them)."""
    usable = pages - held_out
    if usable <= 0:
        raise ValueError("no pages left to train on")
    rng = _rng(seed, window, uid)
    return [int(p) for p in rng.choice(usable, size=count, replace=count > usable)]


def eval_pages(seed: int, window: int, count: int, pages: int, held_out: int) -> list[int]:
    """`count` held-out pages for `window`'s evaluation."""
    if held_out <= 0:
        raise ValueError("no held-out pages")
    rng = _rng(seed, window, _EVAL_STREAM)
    chosen = rng.choice(held_out, size=count, replace=count > held_out)
    return [pages - held_out + int(p) for p in chosen]


def offsets(seed: int, window: int, stream: int, page: int, rows: int, room: int) -> list[int]:
    """Where `rows` sequences start in a page: each in [0, room], room being the page's
    length less a sequence's."""
    rng = np.random.default_rng([seed, window, stream, page])
    return [int(o) for o in rng.integers(0, room + 1, size=rows)]
