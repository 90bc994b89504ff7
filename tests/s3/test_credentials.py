"""Credentials against a server that checks them: wrong secret, unknown key, read-only key."""

from __future__ import annotations

import pytest

from adapters.storage.s3 import S3Settings, S3Store, S3StoreOpener
from ports import AccessDenied, StorageError
from tests.s3.server import SeaweedServer


def _texts(exc: BaseException) -> list[str]:
    """Everything an exception and its chain would show in a log or traceback."""
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc), repr(exc.args)]
        exc = exc.__cause__ or exc.__context__
    return out


async def test_wrong_secret_is_access_denied_without_leaking_it(
    seaweedfs: SeaweedServer, bucket_name: str, opener: S3StoreOpener
) -> None:
    secret = "wrong-secret-" + "x" * 20
    store = opener.open(seaweedfs.bucket(bucket_name, secret=secret))
    for call, reason in (
        (lambda: store.put("k", b"v"), "secret access key does not match"),
        (lambda: store.get("k"), "secret access key does not match"),
        (lambda: store.head("k"), "secret may not match"),  # HEAD errors carry no reason
        (lambda: store.delete(["k"]), "secret access key does not match"),
    ):
        with pytest.raises(AccessDenied) as info:
            await call()
        message = str(info.value)
        assert bucket_name in message and seaweedfs.admin[0] in message
        assert reason in message
        for text in _texts(info.value):
            assert secret not in text
    with pytest.raises(AccessDenied):
        _ = [m async for m in store.list()]
    assert secret not in repr(store) and secret not in repr(seaweedfs.bucket(bucket_name))
    await store.close()


async def test_unknown_access_key_id_is_access_denied(
    seaweedfs: SeaweedServer, bucket_name: str, opener: S3StoreOpener
) -> None:
    bucket = seaweedfs.bucket(bucket_name)
    from attrs import evolve

    store = opener.open(evolve(bucket, access_key_id="nobody-knows-me"))
    with pytest.raises(AccessDenied, match="does not know this access key id"):
        await store.get("k")
    await store.close()


async def test_read_only_key_reads_but_cannot_write(
    seaweedfs: SeaweedServer, bucket_name: str, opener: S3StoreOpener, tmp_path
) -> None:
    writer = opener.open(seaweedfs.bucket(bucket_name))
    reader = opener.open(seaweedfs.bucket(bucket_name, read_only=True))
    await writer.put("shared", b"data")
    assert (await reader.get("shared")).data == b"data"
    assert [m.key async for m in reader.list()] == ["shared"]
    src = tmp_path / "f.bin"
    src.write_bytes(b"file")
    for call in (
        lambda: reader.put("new", b"x"),
        lambda: reader.put_file("new", str(src)),
        lambda: reader.delete(["shared"]),
    ):
        with pytest.raises(AccessDenied, match="may be read-only") as info:
            await call()
        assert bucket_name in str(info.value) and seaweedfs.reader[0] in str(info.value)
        for text in _texts(info.value):
            assert seaweedfs.reader[1] not in text
    assert (await writer.get("shared")).data == b"data"  # the refused delete left it alone
    await reader.close()
    await writer.close()


async def test_missing_bucket_is_a_storage_error_not_a_missing_key(
    seaweedfs: SeaweedServer, opener: S3StoreOpener
) -> None:
    store = opener.open(seaweedfs.bucket("no-such-bucket-here"))
    with pytest.raises(StorageError, match="bucket does not exist") as info:
        await store.get("k")
    assert type(info.value) is StorageError
    await store.close()


def test_settings_and_opener_reprs_hold_no_secret(seaweedfs: SeaweedServer) -> None:
    opener = S3StoreOpener(S3Settings())
    bucket = seaweedfs.bucket("any-bucket")
    store = opener.open(bucket)
    assert isinstance(store, S3Store)
    for text in (repr(bucket), str(bucket), repr(store), repr(opener), repr(opener.settings)):
        assert seaweedfs.admin[1] not in text
    opener.close()
