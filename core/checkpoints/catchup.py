"""Catch-up: replay the network's aggregated updates from a checkpoint's window to now.

A checkpoint of window w holds the state after window w's update. A late joiner loads it, then
applies the aggregated update of each window w+1 .. target (the last completed window), in
order, through the caller's `apply(window, update)`; the caller owns the optimizer logic, so
replaying is the same code path a peer that never left ran. Updates come from `fetch` (the
aggregator bucket, see `aggregator_updates`); when it has nothing for a window, `fallback`
(e.g. a gather of that window's gradients) is asked instead.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping

import attrs
import torch

from core import codec, keys
from core.compression import Compressor
from ports import NotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)

Update = Mapping[str, torch.Tensor]
Fetch = Callable[[int], Awaitable[Update | None]]
Apply = Callable[[int, Update], Awaitable[None] | None]

__all__ = ["CatchUp", "CatchUpStatus", "aggregator_updates", "catch_up"]


class CatchUpStatus(enum.Enum):
    UP_TO_DATE = "up_to_date"  # nothing to replay
    CAUGHT_UP = "caught_up"
    TOO_FAR_BEHIND = "too_far_behind"  # more than sync_max_steps_behind windows; nothing applied
    INCOMPLETE = "incomplete"  # stopped at a window with no update from any source


@attrs.frozen
class CatchUp:
    status: CatchUpStatus
    start_window: int
    target_window: int
    applied: tuple[int, ...] = ()
    sources: Mapping[int, str] = attrs.field(factory=dict)  # window -> "aggregator" | "fallback"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (CatchUpStatus.UP_TO_DATE, CatchUpStatus.CAUGHT_UP)

    @property
    def last_window(self) -> int:
        """The window the model state now corresponds to."""
        return self.applied[-1] if self.applied else self.start_window


def aggregator_updates(
    store: ObjectStore,
    *,
    version: str,
    compressor: Compressor,
    shapes: Mapping[str, tuple[int, ...]],
    device: torch.device | str = "cpu",
    max_bytes: int | None = None,
    scheme: keys.KeyScheme = keys.NATIVE,
) -> Fetch:
    """A `fetch` reading the aggregate of a window (`aggregator-{window}-v{version}.safetensors`
    in `scheme`, ours) from `store`, decoded and validated by `core.codec`; a missing or
    invalid object is None (with a log line)."""

    async def fetch(window: int) -> Update | None:
        expected = codec.Expected(
            version=version, codec=compressor, shapes=shapes, window=window, max_bytes=max_bytes
        )
        key = scheme.aggregator(window, version)
        try:
            blob = await store.get(key, max_bytes=expected.size_limit())
            payload = codec.decode(blob.data, expected)
        except NotFound:
            log.info("catch-up: no aggregator object for window %d", window)
            return None
        except (StorageError, codec.InvalidPayload) as exc:
            log.warning("catch-up: aggregator object for window %d unusable: %s", window, exc)
            return None
        return payload.dense(compressor, device)

    return fetch


async def catch_up(
    *,
    start_window: int,
    target_window: int,
    sync_max_steps_behind: int,
    fetch: Fetch,
    apply: Apply,
    fallback: Fetch | None = None,
) -> CatchUp:
    """Apply the updates of windows start_window+1 .. target_window, in order.

    Refuses (applies nothing) when that is more than `sync_max_steps_behind` windows; stops at
    the first window neither `fetch` nor `fallback` can supply, since skipping one would leave
    the model off the network's trajectory. The result says which windows were applied.
    """
    behind = target_window - start_window
    if behind <= 0:
        return CatchUp(CatchUpStatus.UP_TO_DATE, start_window, target_window, message="up to date")
    if behind > sync_max_steps_behind:
        message = (
            f"cannot catch up: the checkpoint (window {start_window}) is {behind} windows behind "
            f"window {target_window}, more than sync_max_steps_behind={sync_max_steps_behind}; "
            "load a newer checkpoint or raise sync_max_steps_behind"
        )
        log.error("%s", message)
        return CatchUp(CatchUpStatus.TOO_FAR_BEHIND, start_window, target_window, message=message)
    applied: list[int] = []
    sources: dict[int, str] = {}
    for window in range(start_window + 1, target_window + 1):
        update, source = await fetch(window), "aggregator"
        if update is None and fallback is not None:
            update, source = await fallback(window), "fallback"
        if update is None:
            message = (
                f"catch-up stopped at window {window}: no aggregated update and no fallback "
                f"result; the state is at window {applied[-1] if applied else start_window}"
            )
            log.error("%s", message)
            return CatchUp(
                CatchUpStatus.INCOMPLETE, start_window, target_window, tuple(applied), sources,
                message,
            )  # fmt: skip
        result = apply(window, update)
        if inspect.isawaitable(result):
            await result
        applied.append(window)
        sources[window] = source
    message = f"caught up from window {start_window} to {target_window} ({len(applied)} windows)"
    log.info("%s", message)
    return CatchUp(
        CatchUpStatus.CAUGHT_UP, start_window, target_window, tuple(applied), sources, message
    )
