"""The Content-MD5 every write carries is checked by a real server (SeaweedFS, as R2 does): a
body that does not match it is refused, and the key keeps what it held."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.storage.s3 import S3Settings, S3StoreOpener
from ports import TransientStorageError
from tests.s3.server import SeaweedServer

MiB = 1 << 20
WRONG = "1B2M2Y8AsgTpgAmY7PhCfg=="  # the MD5 of no bytes: what a body damaged in transit shows


def _damage(request: Any, **_: Any) -> None:
    # Runs after the adapter's own handler (registered when the client is built), as if the
    # body had changed between hashing and the server.
    request.headers.replace_header("Content-MD5", WRONG)


@pytest.mark.parametrize(("size", "op"), [(1000, "PutObject"), (11 * MiB, "UploadPart")])
async def test_a_body_that_does_not_match_its_md5_is_refused_and_nothing_is_lost(
    seaweedfs: SeaweedServer, bucket_name: str, size: int, op: str
) -> None:
    damaging = False

    def on_client(client: Any) -> None:
        client.meta.events.register(
            f"before-sign.s3.{op}", lambda request, **kw: damaging and _damage(request)
        )

    settings = S3Settings(max_attempts=1, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    opener = S3StoreOpener(settings, on_client=on_client)
    store = opener.open(seaweedfs.bucket(bucket_name))
    await store.put("k", b"v1")
    damaging = True
    with pytest.raises(TransientStorageError, match="BadDigest"):
        await store.put("k", b"v" * size)
    assert (await store.get("k")).data == b"v1"
    await store.close()
    opener.close()
