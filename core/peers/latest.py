"""The peer-list pointer: `peers-latest-v{version}.json`, the effective windows of a
validator's newest peer lists, newest first.

Listing every `peers-` key costs one request per 1,000 lists, so a reader's cost would grow
with the subnet's age; the pointer makes reading the current list two GETs whatever the
number of lists. A validator writes it after the list it names, so a reader that sees a
window there finds its list unless the janitor has since removed it. The pointer is
untrusted input like the lists: size-bounded before download, strict JSON, an exact schema,
at most `MAX_WINDOWS` distinct non-negative windows in descending order.
"""

from __future__ import annotations

import itertools
import json
import logging

from core import keys, strict_json
from ports import NotFound, ObjectStore, TooLarge

log = logging.getLogger(__name__)

SCHEMA = 1
# More than a reader can fall behind by and still want a list: the newest `margin` entries
# are not yet effective, and a reader tries at most three lists below them.
MAX_WINDOWS = 16
MAX_BYTES = 4096


class InvalidPointer(ValueError):
    pass


def encode(windows: list[int], version: str) -> bytes:
    body = {"schema": SCHEMA, "version": version, "windows": windows}
    return json.dumps(body, separators=(",", ":")).encode()


def parse(data: bytes, version: str) -> tuple[int, ...]:
    """The windows a pointer names, newest first; raises `InvalidPointer`."""
    try:
        body = strict_json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidPointer(f"not strict JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) != {"schema", "version", "windows"}:
        raise InvalidPointer("not an object with exactly schema, version and windows")
    if body["schema"] != SCHEMA or body["version"] != version:
        raise InvalidPointer(f"schema or version is not {SCHEMA}, {version!r}")
    windows = body["windows"]
    if not isinstance(windows, list) or not 1 <= len(windows) <= MAX_WINDOWS:
        raise InvalidPointer(f"windows must be a list of 1 to {MAX_WINDOWS} windows")
    for w in windows:
        if not isinstance(w, int) or isinstance(w, bool) or w < 0:
            raise InvalidPointer("a window is not a non-negative integer")
    if any(a <= b for a, b in itertools.pairwise(windows)):
        raise InvalidPointer("windows are not strictly descending")
    return tuple(windows)


async def read(store: ObjectStore, version: str) -> tuple[int, ...] | None:
    """The pointer's windows; None when there is none (a bucket written before pointers).

    Raises `InvalidPointer` for a pointer that is there but unusable and `StorageError` when
    the bucket cannot be read.
    """
    try:
        blob = await store.get(keys.peers_latest(version), max_bytes=MAX_BYTES)
    except NotFound:
        return None
    except TooLarge:
        raise InvalidPointer(f"over {MAX_BYTES} bytes") from None
    return parse(blob.data, version)


async def listed(
    store: ObjectStore,
    version: str,
    window: int | None = None,
    *,
    scheme: keys.KeyScheme = keys.NATIVE,
) -> list[int]:
    """Effective windows of the lists in `store` (at most `window`), newest first, by listing
    every peer-list key: the fallback for buckets without a pointer (and the only way for a
    scheme without one, Templar's), whose cost grows with the number of lists."""
    windows = []
    async for meta in store.list(scheme.peers_prefix):
        parsed = scheme.parse(meta.key)
        if (
            parsed is not None
            and parsed.kind is keys.KeyKind.PEERS
            and parsed.version == version
            and parsed.window is not None
            and (window is None or parsed.window <= window)
        ):
            windows.append(parsed.window)
    return sorted(windows, reverse=True)


async def advance(store: ObjectStore, effective: int, version: str) -> tuple[int, ...]:
    """Record that the list effective at `effective` now exists; returns the new pointer.

    Entries at or above `effective` are dropped: a validator publishes lists for ever later
    windows, so such an entry is left from another configuration or was never ours, and
    keeping it would pin a wrong newest list at the top. Without a usable pointer (the first
    list after an upgrade, or a damaged pointer) the entries come from one listing, so that
    readers still find the lists effective before `effective`. A storage error propagates
    and leaves the old pointer in place: one window stale beats losing its older entries.
    """
    try:
        previous = await read(store, version)
    except InvalidPointer as exc:
        log.warning("rebuilding the peer-list pointer of %s: %s", store.name, exc)
        previous = None
    if previous is None:
        previous = tuple(await listed(store, version))
    windows = [effective, *(w for w in previous if w < effective)][:MAX_WINDOWS]
    await store.put(keys.peers_latest(version), encode(windows, version))
    return tuple(windows)
