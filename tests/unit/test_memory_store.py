from __future__ import annotations

import pytest

from adapters.clock import FakeClock
from adapters.storage.memory import MemoryStoreOpener
from ports import AccessDenied, Bucket


def creds(key_id: str) -> Bucket:
    return Bucket(name="grads", account_id="a", access_key_id=key_id, secret_access_key="s")


async def test_last_modified_comes_from_the_injected_clock() -> None:
    clock = FakeClock()
    store = MemoryStoreOpener(clock).open(creds("w"))
    clock.advance(42)
    meta = await store.put("k", b"v")
    assert meta.last_modified == clock.now()


async def test_read_key_cannot_write_but_sees_the_writers_objects() -> None:
    opener = MemoryStoreOpener(FakeClock(), read_only_keys={"r"})
    writer, reader = opener.open(creds("w")), opener.open(creds("r"))
    await writer.put("k", b"v")
    assert (await reader.get("k")).data == b"v"
    with pytest.raises(AccessDenied, match="read-only"):
        await reader.put("k", b"evil")
    with pytest.raises(AccessDenied):
        await reader.delete(["k"])
    assert (await writer.get("k")).data == b"v"
