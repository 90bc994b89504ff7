"""The obstore adapter's own behaviour, beyond the contract suite: what goes on the wire, how
failures map, the client cache, listing, the clock, configuration. SeaweedFS on 127.0.0.1,
with a recording proxy (`tests/obstore/proxy.py`) where the requests themselves matter."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest

from adapters.storage.obstore_store import (
    ObstoreSettings,
    ObstoreStore,
    ObstoreStoreOpener,
    _list_start,
    _past,
    check_endpoint,
)
from ports import AccessDenied, Bucket, NotFound, StorageError, TooLarge, TransientStorageError
from tests.obstore.proxy import Proxy, Seen
from tests.s3.server import SeaweedServer

pytestmark = pytest.mark.s3
MiB = 1 << 20
# Small parts and threshold, so that multipart uploads happen with small payloads.
SMALL = ObstoreSettings(
    multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB, max_attempts=3, retry_timeout=5.0
)


@pytest.fixture
def bucket_name(seaweedfs: SeaweedServer) -> Iterator[str]:
    name = seaweedfs.create_bucket("obstore")
    yield name
    seaweedfs.delete_bucket(name)


@pytest.fixture
def opener() -> Iterator[ObstoreStoreOpener]:
    made = ObstoreStoreOpener(SMALL)
    yield made
    made.close()


@pytest.fixture
def proxy(seaweedfs: SeaweedServer) -> Iterator[Proxy]:
    made = Proxy(seaweedfs.endpoint)
    yield made
    made.close()


@pytest.fixture
async def store(
    seaweedfs: SeaweedServer, bucket_name: str, opener: ObstoreStoreOpener, proxy: Proxy
) -> AsyncIterator[ObstoreStore]:
    """A store whose every request passes through `proxy`."""
    bucket = attrs.evolve(seaweedfs.bucket(bucket_name), endpoint=proxy.endpoint)
    made = opener.open(bucket)
    yield made
    await made.close()


def writes(proxy: Proxy) -> list[Seen]:
    return [s for s in proxy.seen if s.method in ("PUT", "POST")]


async def test_every_write_is_a_plain_body_signed_with_its_sha256(
    store: ObstoreStore, proxy: Proxy, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(7 * MiB))
    await store.put("one-shot", b"x" * 1000)
    await store.put("multipart", os.urandom(7 * MiB))
    await store.put_file("file", str(src))
    await store.put_stream("stream", iter([os.urandom(3 * MiB) for _ in range(3)]))
    await store.delete(["one-shot", "file"])
    sent = writes(proxy)
    parts = [s for s in sent if "partNumber=" in s.path]
    assert len(parts) >= 6 and any("?delete" in s.path for s in sent)
    for seen in sent:
        headers = seen.headers
        # Never R2's refused forms: no aws-chunked body, no trailer, no streaming signature.
        assert not seen.chunked
        assert "aws-chunked" not in headers.get("content-encoding", "")
        assert "x-amz-trailer" not in headers
        assert "x-amz-decoded-content-length" not in headers
        assert headers["content-length"] == str(len(seen.body))
        assert headers["x-amz-content-sha256"] == hashlib.sha256(seen.body).hexdigest()
    # Parts of one upload are equal but for the last, as R2 wants.
    assert {len(s.body) for s in parts} == {5 * MiB, 2 * MiB, 4 * MiB}


async def test_a_read_only_key_cannot_write_and_says_so(
    seaweedfs: SeaweedServer, bucket_name: str, opener: ObstoreStoreOpener
) -> None:
    store = opener.open(seaweedfs.bucket(bucket_name, read_only=True))
    with pytest.raises(AccessDenied, match="read-only"):
        await store.put("k", b"1")
    assert await store.head("k") is None  # reading is allowed


async def test_a_wrong_secret_is_access_denied_naming_the_key_but_never_the_secret(
    seaweedfs: SeaweedServer, bucket_name: str, opener: ObstoreStoreOpener
) -> None:
    store = opener.open(seaweedfs.bucket(bucket_name, secret="not-the-secret"))
    with pytest.raises(AccessDenied) as info:
        await store.get("k")
    assert "secret access key does not match" in str(info.value)
    assert seaweedfs.admin[0] in str(info.value) and "not-the-secret" not in str(info.value)


async def test_a_missing_bucket_is_not_a_missing_key(
    seaweedfs: SeaweedServer, opener: ObstoreStoreOpener
) -> None:
    store = opener.open(seaweedfs.bucket("no-such-bucket-here"))
    with pytest.raises(StorageError, match="bucket does not exist") as info:
        await store.get("k")
    assert not isinstance(info.value, NotFound)


async def test_5xx_is_retried_then_transient(store: ObstoreStore, proxy: Proxy) -> None:
    await store.put("k", b"value")
    proxy.seen.clear()
    proxy.fault = lambda seen: (503, {}, b"<Error><Code>SlowDown</Code></Error>")
    with pytest.raises(TransientStorageError, match="SlowDown"):
        await store.get("k")
    assert len(proxy.seen) == SMALL.max_attempts

    failures = iter(range(SMALL.max_attempts - 1))
    proxy.fault = lambda seen: (
        (500, {}, b"<Error><Code>InternalError</Code></Error>")
        if next(failures, None) is not None
        else None
    )
    assert (await store.get("k")).data == b"value"  # the retries got through


@pytest.mark.parametrize("fault", ["drop", "short"])
async def test_a_broken_connection_is_transient(
    store: ObstoreStore, proxy: Proxy, fault: str
) -> None:
    await store.put("k", b"v" * 100_000)
    proxy.fault = lambda seen: fault if seen.method == "GET" else None
    with pytest.raises(TransientStorageError):
        await store.get("k")
    proxy.fault = None
    assert len((await store.get("k")).data) == 100_000  # the client recovered by itself


async def test_a_refused_request_form_is_one_clear_error(store: ObstoreStore, proxy: Proxy) -> None:
    refusal = b"<Error><Code>NotImplemented</Code><Message>Header 'x' not implemented</Message>"
    proxy.fault = lambda seen: (501, {}, refusal + b"</Error>")
    with pytest.raises(StorageError, match="refused the form of the request") as info:
        await store.put("k", b"1")
    assert not isinstance(info.value, TransientStorageError)
    assert "Header 'x' not implemented" in str(info.value)


async def test_a_refused_bulk_delete_falls_back_to_one_key_at_a_time(
    store: ObstoreStore, proxy: Proxy
) -> None:
    for key in ("d/1", "d/2", "keep"):
        await store.put(key, b".")
    refusal = b"<Error><Code>NotImplemented</Code><Message>Header 'x-amz-checksum-sha256'"
    proxy.fault = lambda seen: (
        (501, {}, refusal + b" not implemented</Message></Error>")
        if seen.method == "POST" and "delete" in seen.path
        else None
    )
    await store.delete(["d/1", "d/2", "d/none"])
    assert [m.key async for m in store.list()] == ["keep"]
    singles = [s for s in proxy.seen if s.method == "DELETE"]
    assert len(singles) == 3 and all(not s.body for s in singles)


async def test_too_large_is_refused_on_the_headers_and_the_store_goes_on(
    store: ObstoreStore, proxy: Proxy, tmp_path: Path
) -> None:
    await store.put("big", b"z" * (2 * MiB))
    proxy.seen.clear()
    with pytest.raises(TooLarge):
        await store.get("big", max_bytes=MiB)
    with pytest.raises(TooLarge):
        await store.get_file("big", str(tmp_path / "out"), max_bytes=MiB)
    assert not (tmp_path / "out").exists()
    # One GET each, no HEAD first: the size comes with the GET's headers.
    assert [s.method for s in proxy.seen] == ["GET", "GET"]
    assert len((await store.get("big", max_bytes=2 * MiB)).data) == 2 * MiB


async def test_one_client_per_bucket_and_credentials_kept_across_stores(
    seaweedfs: SeaweedServer, bucket_name: str
) -> None:
    other = seaweedfs.create_bucket("obstore")
    opener = ObstoreStoreOpener(ObstoreSettings(client_cache_size=2))
    try:
        first = opener.open(seaweedfs.bucket(bucket_name))
        await first.put("k", b"1")
        again = opener.open(seaweedfs.bucket(bucket_name))  # next window, same peer
        await again.get("k")
        assert opener.cached == 1
        assert opener.client(again._ident, again._bucket) is opener.client(
            first._ident, first._bucket
        )
        reader = opener.open(seaweedfs.bucket(bucket_name, read_only=True))
        await reader.get("k")
        assert opener.cached == 2
        # A third identity drops the least recently used one (the admin key on bucket_name).
        kept = opener.client(reader._ident, reader._bucket)
        await opener.open(seaweedfs.bucket(other)).head("k")
        assert opener.cached == 2
        assert opener.client(reader._ident, reader._bucket) is kept
        assert (await first.get("k")).data == b"1"  # rebuilt on demand
    finally:
        opener.close()
        seaweedfs.delete_bucket(other)


async def test_a_cache_of_zero_keeps_no_client(seaweedfs: SeaweedServer, bucket_name: str) -> None:
    opener = ObstoreStoreOpener(ObstoreSettings(client_cache_size=0))
    try:
        store = opener.open(seaweedfs.bucket(bucket_name))
        await store.put("k", b"1")
        assert (await store.get("k")).data == b"1" and opener.cached == 0
    finally:
        opener.close()
    with pytest.raises(StorageError, match="closed"):
        await store.get("k")


def test_list_start_covers_every_key_with_the_prefix() -> None:
    assert _list_start("") == (None, None)
    assert _list_start("gradient-") == (None, "gradient")
    assert _list_start("checkpoints/v1/5-") == ("checkpoints/v1", "checkpoints/v1/5")
    assert _list_start("d/") == ("d", None)
    assert _list_start("d/4") == ("d", None)
    assert _list_start("d/40") == ("d", "d/4")


def test_a_listing_ends_only_past_the_prefix_in_both_orders() -> None:
    # S3 orders "a-1" < "a/x"; SeaweedFS lists a directory where its name sorts: "a/x" first.
    assert not _past("a/x", "a-") and not _past("a-1", "a/")
    assert _past("a0", "a-") and _past("b", "a/") and _past("ab/x", "a/b")
    assert not _past("a-1", "a-") and not _past("a", "a-")


async def test_list_pages_by_plain_prefix(seaweedfs: SeaweedServer, bucket_name: str) -> None:
    opener = ObstoreStoreOpener(ObstoreSettings(list_page_size=2))
    try:
        store = opener.open(seaweedfs.bucket(bucket_name))
        keys = ["a", "a-1", "a-2", "a/x", "a/y/z", "a0", "ab", "b", "c-1", "c/x", "d/4", "d/4/5"]
        for key in [*keys, "d/40"]:
            await store.put(key, b".")

        async def listed(prefix: str) -> list[str]:
            # SeaweedFS orders by path segment (R2 and S3 by bytes): compare as sets.
            found = [m.key async for m in store.list(prefix)]
            assert len(found) == len(set(found))
            return sorted(found)

        assert await listed("") == sorted([*keys, "d/40"])
        assert await listed("a") == ["a", "a-1", "a-2", "a/x", "a/y/z", "a0", "ab"]
        assert await listed("a-") == ["a-1", "a-2"]
        assert await listed("c-") == ["c-1"]
        assert await listed("a/") == ["a/x", "a/y/z"]
        assert await listed("a/y") == ["a/y/z"]
        assert await listed("d/4") == ["d/4", "d/4/5", "d/40"]
        assert await listed("d/40") == ["d/40"]
        assert await listed("c") == ["c-1", "c/x"]
        assert await listed("e") == []
    finally:
        opener.close()


async def test_server_time_needs_only_read_keys_and_any_answer(
    seaweedfs: SeaweedServer, bucket_name: str, opener: ObstoreStoreOpener
) -> None:
    for bucket in (
        seaweedfs.bucket(bucket_name, read_only=True),
        seaweedfs.bucket(bucket_name, secret="wrong"),  # a 403 carries the Date too
    ):
        stamp = await opener.open(bucket).server_time()
        assert stamp.utcoffset().total_seconds() == 0
    gone = Bucket(
        name=bucket_name, account_id="x", access_key_id="k", secret_access_key="s",
        endpoint="http://127.0.0.1:9",
    )  # fmt: skip
    with pytest.raises(TransientStorageError):
        await opener.open(gone).server_time()


async def test_aws_variables_in_the_environment_change_nothing(
    store: ObstoreStore, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "someone-elses-token")
    monkeypatch.setenv("AWS_SKIP_SIGNATURE", "true")
    monkeypatch.setenv("AWS_UNSIGNED_PAYLOAD", "true")
    await store.put("k", b"1")
    assert (await store.get("k")).data == b"1"
    assert proxy.seen and all("x-amz-security-token" not in s.headers for s in proxy.seen)
    assert all(s.headers["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD" for s in proxy.seen)


@pytest.mark.parametrize(
    "url",
    [
        "localhost:9000",
        "ftp://host",
        "https://",
        "https://user:pw@host",
        "https://h/?x=1",
        "http://h:x",
    ],
)
def test_an_endpoint_obstore_cannot_use_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        check_endpoint(url)


def test_plain_http_only_where_the_endpoint_says_so() -> None:
    settings = ObstoreSettings()
    assert settings.client_options("https://acct.r2.cloudflarestorage.com")["allow_http"] is False
    assert settings.client_options("http://127.0.0.1:8333")["allow_http"] is True
    assert settings.retry_config()["max_retries"] == settings.max_attempts - 1
    with pytest.raises(ValueError):
        ObstoreSettings(multipart_chunksize=MiB)  # S3 refuses parts under 5 MiB
