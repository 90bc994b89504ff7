"""What only the local-directory store must do, beyond the shared contract."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from adapters.storage.local import LocalStore, LocalStoreOpener
from ports import Bucket, InvalidKey, NotFound, StorageError


def bucket(name: str) -> Bucket:
    return Bucket(name=name, account_id="a", access_key_id="k", secret_access_key="s")


def test_bucket_names_cannot_escape_the_root(tmp_path: Path) -> None:
    opener = LocalStoreOpener(tmp_path)
    for name in ("..", "../x", "a/b", ".hidden", "x" * 80):
        with pytest.raises(ValueError):
            opener.open(bucket(name))
    assert opener.open(bucket("good-name.1")).name == "good-name.1"


async def test_symlink_out_of_the_bucket_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "b")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    os.symlink(outside, tmp_path / "b" / "objects" / "link")
    with pytest.raises(InvalidKey):
        await store.get("link/secret")
    with pytest.raises(InvalidKey):
        await store.put("link/new", b"x")
    assert not (outside / "new").exists()


async def test_a_failed_write_leaves_the_old_value_and_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "b")
    await store.put("k", b"old")

    def exploding():
        yield b"partial new bytes"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await asyncio.to_thread(store._put, "k", exploding())
    assert (await store.get("k")).data == b"old"
    assert list((tmp_path / "b" / ".tmp").iterdir()) == []


async def test_key_that_is_a_prefix_of_another_is_a_clear_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "b")
    await store.put("a", b"file")
    with pytest.raises(StorageError, match="conflicts"):
        await store.put("a/b", b"nested")
    assert (await store.get("a")).data == b"file"


async def test_deletes_prune_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "b")
    await store.put("checkpoints/v1/5-0/manifest.json", b"{}")
    await store.delete(["checkpoints/v1/5-0/manifest.json"])
    assert list((tmp_path / "b" / "objects").iterdir()) == []


async def test_two_stores_on_one_directory_see_each_others_objects(tmp_path: Path) -> None:
    writer = LocalStoreOpener(tmp_path).open(bucket("shared"))
    reader = LocalStoreOpener(tmp_path).open(bucket("shared"))
    await writer.put("gradient-1-2-v1.safetensors", b"payload")
    assert (await reader.get("gradient-1-2-v1.safetensors")).data == b"payload"


def test_temp_files_left_by_a_crash_are_swept_when_old(tmp_path: Path) -> None:
    LocalStore(tmp_path / "b")
    tmp = tmp_path / "b" / ".tmp"
    old, fresh = tmp / ".part-old", tmp / ".part-fresh"
    old.write_bytes(b"abandoned")
    fresh.write_bytes(b"another process is still writing")
    os.utime(old, (0, 0))
    LocalStore(tmp_path / "b")  # opening the bucket sweeps
    assert not old.exists() and fresh.exists()
    assert LocalStore(tmp_path / "b").sweep_temp(older_than=0) == 1
    assert not fresh.exists()


@pytest.mark.parametrize("planted", ["objects", ".tmp"])
def test_a_bucket_whose_directories_are_symlinks_is_refused(tmp_path: Path, planted) -> None:
    """A peer sharing the filesystem must not point our reads or temp sweep elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    old = elsewhere / ".part-precious"
    old.write_bytes(b"not ours")
    os.utime(old, (0, 0))  # older than any sweep cutoff
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / planted).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(StorageError, match="symlink"):
        LocalStore(tmp_path / "b")
    assert old.exists()


async def test_a_named_pipe_or_a_symlink_at_a_key_is_not_an_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "b")
    await store.put("real", b"data")
    objects = tmp_path / "b" / "objects"
    os.mkfifo(objects / "pipe")
    (objects / "link").symlink_to(objects / "real")
    assert [m.key async for m in store.list("")] == ["real"]
    for key in ("pipe", "link"):
        assert await store.head(key) is None
        with pytest.raises(NotFound):  # at once: a pipe with no writer would block a read
            await asyncio.wait_for(store.get(key), timeout=30)
    await store.put("pipe", b"ours")  # our own put replaces what was planted
    assert (await store.get("pipe")).data == b"ours"
