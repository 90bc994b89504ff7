"""Secrets never leak: failing S3 calls, gathers, chain commitments and configuration errors
are run with every logger (botocore's included) at DEBUG, and everything that was logged,
printed, raised or repr'd is scanned for the secret values."""

from __future__ import annotations

import logging
import secrets
import socket
import traceback

import attrs
import pytest

from adapters.chain.commitment import MalformedCommitment, encode_bucket, parse_commitment
from adapters.chain.fake import FakeNetwork
from adapters.clock import FakeClock, SystemClock
from adapters.storage.r2_env import buckets_from_env
from adapters.storage.s3 import S3Settings, S3StoreOpener
from core.codec import Expected
from core.exchange import Exchange
from core.fetch import FetchSettings
from core.gather import GatherSettings, gather
from core.keys import KeyKind
from ports import Bucket, StorageError
from tests.reliability.support import COMP, SHAPES, V, W, encode
from tests.s3.server import LOOPBACK, SeaweedServer

FAST = S3Settings(max_attempts=2, connect_timeout=1.0, read_timeout=3.0)


def _secret(tag: str) -> str:
    # 64 printable characters, as R2 issues; unique, so a hit can only be a leak
    return f"{tag}-" + secrets.token_hex(32)[: 63 - len(tag)]


def _texts(exc: BaseException) -> list[str]:
    """What an exception and its whole chain would show in a log or a traceback."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc), repr(exc.args)]
        out += traceback.format_exception(type(exc), exc, exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
    return out


class Scan:
    """Collects every text a test produced and asserts none holds a secret."""

    def __init__(self, caplog, capsys) -> None:
        self.caplog, self.capsys = caplog, capsys
        self.texts: list[str] = []
        caplog.set_level(logging.DEBUG)
        for name in ("botocore", "boto3", "s3transfer", "urllib3"):
            caplog.set_level(logging.DEBUG, logger=name)

    async def fails(self, call) -> BaseException:
        try:
            await call()
        except Exception as exc:  # every failure must be safe to show
            self.texts += _texts(exc)
            return exc
        raise AssertionError("expected the call to fail")

    def check(self, *values: str, present: tuple[str, ...] = ()) -> None:
        """No `values` anywhere; every one of `present` somewhere (the scan saw the text)."""
        out = self.capsys.readouterr()
        logged = [self.caplog.text]
        for record in self.caplog.records:
            logged.append(record.getMessage())
            if record.exc_info:
                logged += traceback.format_exception(*record.exc_info)
        corpus = "\n".join([*self.texts, *logged, out.out, out.err])
        assert self.caplog.records, "nothing was logged: the scan would prove nothing"
        for value in values:
            assert value not in corpus
        for value in present:
            assert value in corpus


def _dead_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return f"http://{LOOPBACK}:{sock.getsockname()[1]}"  # closed again: nobody listens


@pytest.mark.s3
async def test_failing_s3_calls_and_gathers_never_show_a_secret(
    seaweedfs: SeaweedServer, caplog, capsys, tmp_path
) -> None:
    scan = Scan(caplog, capsys)
    name = seaweedfs.create_bucket("secrets")
    wrong = _secret("wrong")
    good = seaweedfs.bucket(name)
    cases = {
        "wrong secret": attrs.evolve(good, secret_access_key=wrong),
        "read-only key writing": seaweedfs.bucket(name, read_only=True),
        "server down": attrs.evolve(good, endpoint=_dead_endpoint()),
    }
    opener = S3StoreOpener(FAST)
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1024)
    try:
        for bucket in cases.values():
            store = opener.open(bucket)
            scan.texts += [repr(bucket), str(bucket), repr(store), repr(opener)]
            for call in (
                lambda s=store: s.put("k", b"v"),
                lambda s=store: s.put_file("k", str(src)),
                lambda s=store: s.put_stream("k", iter([b"x" * 1024])),
                lambda s=store: s.delete(["k"]),
            ):
                assert isinstance(await scan.fails(call), StorageError)
            if bucket.endpoint != good.endpoint or bucket.secret_access_key == wrong:
                for call in (
                    lambda s=store: s.get("k"),
                    lambda s=store: s.head("k"),
                    lambda s=store: s.get_file("k", str(tmp_path / "out")),
                    lambda s=store: s.get_stream("k", lambda fh: fh.read()),
                    lambda s=store: anext(aiter(s.list())),
                ):
                    assert isinstance(await scan.fails(call), StorageError)
            await store.close()

        # A gather whose peers' credentials fail reports reasons, and they are clean too.
        me = Exchange(opener.open(good), opener, SystemClock(), V)
        await me.put(encode(3), W, KeyKind.GRADIENT, 3)
        result = await gather(
            me,
            {1: cases["wrong secret"], 2: cases["server down"], 3: good},
            [1, 2, 3],
            W,
            Expected(version=V, codec=COMP, shapes=SHAPES),
            settings=GatherSettings(fetch=FetchSettings(timeout=3)),
        )
        assert result.skipped[1].startswith("error: access_denied")
        assert result.skipped[2].startswith("error: transient")
        scan.texts += [repr(result), *result.skipped.values()]
        await me.store.close()
    finally:
        opener.close()
        seaweedfs.delete_bucket(name)
    # botocore's DEBUG lines name the key id (in the signed headers), so they were scanned
    scan.check(
        wrong,
        seaweedfs.admin[1],
        seaweedfs.reader[1],
        present=(seaweedfs.admin[0], seaweedfs.reader[0], "Signature=", "access_denied"),
    )


async def test_chain_commitment_errors_never_show_a_secret(caplog, capsys) -> None:
    scan = Scan(caplog, capsys)
    secret = _secret("chain")
    account, key = "a" * 32, "k" * 32
    for bucket in (
        Bucket(name=account, account_id=account, access_key_id=key, secret_access_key=secret + "x"),
        Bucket(name="other", account_id=account, access_key_id=key, secret_access_key=secret),
        Bucket(name=account, account_id="A" * 32, access_key_id=key, secret_access_key=secret),
    ):
        with pytest.raises(MalformedCommitment) as info:
            encode_bucket(bucket)
        scan.texts += _texts(info.value)
        network = FakeNetwork.in_memory(FakeClock())
        network.register("me")
        with pytest.raises(MalformedCommitment) as info:
            await network.chain("me").commit_bucket(bucket)
        scan.texts += _texts(info.value)
    bad = secret[:-1] + " "
    for text in (account + key + bad, account + key + secret + "!", (account + key + secret)[1:]):
        with pytest.raises(MalformedCommitment) as info:
            parse_commitment(text)
        scan.texts += _texts(info.value)
    network = FakeNetwork.in_memory(FakeClock())
    for i, text in enumerate((account + key + bad, account + key + secret[:40])):
        network.write_raw_commitment(f"h{i}", text)
        network.register(f"h{i}")
    assert await network.chain("h0").bucket_commitments() == {}
    parsed = parse_commitment(account + key + secret)
    scan.texts += [repr(parsed), str(parsed)]
    print(parsed)
    logging.getLogger("tests").debug("committed %r", parsed)
    scan.check(secret, bad, present=("commitment skipped", "secret_access_key"))


async def test_configuration_errors_never_show_a_secret(caplog, capsys) -> None:
    config = pytest.importorskip("neurons.config")
    scan = Scan(caplog, capsys)
    secret = _secret("env")
    env = {
        "R2_GRADIENTS_ACCOUNT_ID": "acct",
        "R2_GRADIENTS_BUCKET_NAME": "grads",
        "R2_GRADIENTS_READ_ACCESS_KEY_ID": "rk",
        "R2_GRADIENTS_READ_SECRET_ACCESS_KEY": secret,
        "R2_GRADIENTS_WRITE_ACCESS_KEY_ID": "wk",
        # the write secret is missing: an error naming the variable, never the other values
    }
    with pytest.raises(config.ConfigError) as info:
        config.r2_buckets(env, ("gradients",))
    scan.texts += _texts(info.value)
    assert "R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY" in str(info.value)
    env["R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY"] = secret[::-1]
    found = buckets_from_env(env, ("gradients",))
    scan.texts += [repr(found), str(found)]
    print(found)
    for bad in ({"TEMPLAR_STORAGE": "nope"}, {"TEMPLAR_NETUID": "x"}, {"TEMPLAR_NOPE": "1"}):
        try:
            config.load_settings({**env, **bad})
        except config.ConfigError as exc:
            scan.texts += _texts(exc)
    settings = config.load_settings(env)
    hparams = config.HParams()
    scan.texts.append(repr(config.describe(hparams, settings)))
    logging.getLogger("neurons").debug("config %s", config.describe(hparams, settings))
    scan.check(secret, secret[::-1], present=("R2_GRADIENTS_WRITE_SECRET_ACCESS_KEY", "rk"))
