"""The validator's copy verdicts for one window: which valid uploads copy an earlier one."""

from __future__ import annotations

from datetime import datetime

import attrs
import torch

from core import duplicates
from core.compression import Compressed, Compressor
from ports import ObjectMeta


@attrs.frozen
class Verdict:
    reason: str
    # A copy uploaded after its original is penalised. Equal times cannot say who copied
    # whom: both uploads go unscored (neither paid nor penalised) and unaggregated.
    penalised: bool


class CopyJudge:
    """Collects each valid upload's sketch and store time, then names the copies.

    A threshold of 0 turns it off. Only a fixed-size sketch is kept per peer, so judging
    costs a few kilobytes a peer whatever the payload size.
    """

    def __init__(self, threshold: float, compressor: Compressor) -> None:
        self._threshold = threshold
        self._compressor = compressor
        self._sketches: dict[int, torch.Tensor] = {}
        self._uploaded: dict[int, datetime] = {}

    def add(self, uid: int, compressed: Compressed, meta: ObjectMeta | None) -> None:
        if self._threshold <= 0:
            return
        self._sketches[uid] = duplicates.signature(self._compressor, compressed)
        if meta is not None:
            self._uploaded[uid] = meta.last_modified

    def verdicts(self) -> dict[int, Verdict]:
        """{uid: verdict} for every upload judged a copy, with a `copy: ...` skip reason."""
        if self._threshold <= 0:
            return {}
        found = duplicates.later_copies(self._sketches, self._uploaded, self._threshold)
        out = {}
        for uid, (original, score) in sorted(found.items()):
            alike = f"kept entries {score:.0%} alike (threshold {self._threshold:.0%})"
            if self._uploaded.get(uid) == self._uploaded.get(original):
                out[uid] = Verdict(
                    f"copy: tied_with_{original}: {alike}, uploaded at the same time as uid "
                    f"{original}: neither is scored",
                    penalised=False,
                )
            else:
                out[uid] = Verdict(
                    f"copy: copy_of_{original}: {alike}, uploaded after uid {original}",
                    penalised=True,
                )
        return out
