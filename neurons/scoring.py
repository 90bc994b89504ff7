"""A validator's peer scores: moving averages of evaluations, and the weights they give."""

from __future__ import annotations

import math
from collections.abc import Iterable


class Scores:
    def __init__(self, alpha: float, penalty: float) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError("alpha must be in [0, 1]")
        self.alpha = alpha
        self.penalty = penalty
        self.values: dict[int, float] = {}

    def update(self, uid: int, evaluation: float) -> float:
        """Fold one evaluation in (the first one counts fully, so new peers start fair)."""
        if not math.isfinite(evaluation):
            evaluation = self.penalty
        old = self.values.get(uid)
        new = evaluation if old is None else self.alpha * evaluation + (1 - self.alpha) * old
        self.values[uid] = new
        return new

    def penalise(self, uid: int) -> float:
        """A skipped peer (missing, late, invalid) gets the penalty as its evaluation."""
        return self.update(uid, self.penalty)

    def reset(self, uids: Iterable[int]) -> None:
        for uid in uids:
            self.values.pop(uid, None)

    def weights(self, power: float) -> dict[int, float]:
        """Positive scores to `power`, normalised to sum to one ({} when none is positive)."""
        raised = {u: max(s, 0.0) ** power for u, s in self.values.items()}
        total = math.fsum(raised.values())
        if total <= 0:
            return {}
        return {u: w / total for u, w in raised.items() if w > 0}
