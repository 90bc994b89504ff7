"""The `templar-comms` command line."""

from __future__ import annotations

import copy
import inspect
import logging
import os
import sys
import traceback
import typing
from importlib import metadata
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from typer.models import OptionInfo

from neurons.config import (
    ENV_PREFIX,
    SETTINGS_FIELDS,
    ConfigError,
    load_hparams,
    load_settings,
    parse_assignment,
)
from neurons.local_tools import local_app
from neurons.logs import setup_logging

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="templar-comms: gradients, peers and checkpoints for decentralised training.",
)
console = Console()
err_console = Console(stderr=True)

HParamsFile = Annotated[
    Path | None, typer.Option("--hparams", help="hparams JSON file (overrides the defaults)")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="override one hparam: name=value (repeatable; beats --hparams)"),
]
ProtocolOption = Annotated[
    str | None,
    typer.Option(
        "--protocol",
        help="native | templar: whose keys, bodies, time windows and hparams file to speak "
        "(docs/templar.md)",
    ),
]
TaskOption = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="what to train: tiny | lm | package.module:factory (the `task` hparam; beats --set)",
    ),
]
Opt = typer.Option


def _setup_logging(level: str, fmt: str = "text", vendor_level: str = "WARNING") -> None:
    try:
        setup_logging(level, fmt=fmt, vendor_level=vendor_level)
    except ValueError as exc:
        err_console.print(f"[red]configuration error[/red] {exc}")
        raise typer.Exit(2) from None


def _config_error(exc: ConfigError, log_level: str) -> NoReturn:
    """One line on stderr, exit 2: what is wrong and what to do (neurons/preflight.py). The
    traceback is for whoever asked for DEBUG; an operator needs the line."""
    if log_level.upper() == "DEBUG":
        traceback.print_exception(exc, file=sys.stderr)
    # Plain print: a rich console wraps at its width, and the line must stay one line.
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(2)


def _count(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"--{name}", f"must be at least 1, got {value}")


def _overrides(assignments: list[str] | None, protocol: str | None) -> dict:
    """--set's assignments, and --protocol as the `protocol` hparam (it decides how the
    --hparams file is read, so it must be known before: config.load_hparams)."""
    overrides = dict(parse_assignment(a) for a in assignments or [])
    if protocol is not None:
        if overrides.get("protocol", protocol) != protocol:
            raise ConfigError("--protocol", "differs from --set protocol=...")
        overrides["protocol"] = protocol
    return overrides


def _neuron(
    role: str,
    hparams_file: Path | None,
    assignments: list[str] | None,
    flags: dict,
    max_windows: int | None,
    threads: int | None,
    log_level: str = "WARNING",
    protocol: str | None = None,
    task: str | None = None,
) -> None:
    from neurons.runner import run_neuron  # torch loads here, not for `version`

    try:
        _count("windows", max_windows)
        _count("threads", threads)
        overrides = _overrides(assignments, protocol)
        if task:
            overrides["task"] = task
        hparams = load_hparams(hparams_file, overrides)
        settings = load_settings(os.environ, flags)
        done = run_neuron(
            role,
            hparams,
            settings,
            max_windows=max_windows,
            threads=threads,
            explicit=set(flags),
        )
    except ConfigError as exc:
        _config_error(exc, log_level)
    logging.getLogger("neurons.cli").info("%s: stopped after %d windows", role, done)


def _flags(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def version() -> None:
    """Print the installed version."""
    console.print(metadata.version("templar-comms"))


def _print_version(value: bool) -> None:
    if value:
        print(metadata.version("templar-comms"))
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        Opt(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="print the installed version and exit",
        ),
    ] = False,
) -> None:
    """templar-comms: gradients, peers and checkpoints for decentralised training."""


# What --help shows as the default of a setting whose default is empty.
_EMPTY_DEFAULTS = {
    "hotkey": "the wallet's",
    "s3_endpoint": "R2's",
    "events": "none",
    "faulty": "honest",
}
# Options that are not settings, with what their default means.
_OTHER_DEFAULTS = {
    "hparams": "built-in",
    "set": "none",
    "windows": "no limit",
    "threads": "torch's",
    "protocol": "the hparams' (native)",
    "task": "the hparams' (tiny)",
}
# Options that only one role has.
_ROLE_ONLY = {"faulty": "miner"}


def _conventions(command, role: str):
    """`command` with the options its role has, each showing its default and TEMPLAR_* name.

    The options are declared once for both roles; this drops the ones the other role has
    alone and fills in the help from the settings' own defaults, so the help cannot drift
    from `NeuronSettings`. A TEMPLAR_* variable is read by the option itself, so a value set
    there counts as given (the fake chain's block-time check needs to know).
    """
    signature = inspect.signature(command, eval_str=True)
    params = []
    for param in signature.parameters.values():
        if _ROLE_ONLY.get(param.name, role) != role:
            continue
        base, *extras = typing.get_args(param.annotation)
        infos = [copy.copy(e) if isinstance(e, OptionInfo) else e for e in extras]
        for info in infos:
            if not isinstance(info, OptionInfo):
                continue
            # Named after the flag (--set: TEMPLAR_SET), as the settings' variables are. In
            # Annotated, typer takes Option's first positional (its `default`) as the flag.
            decls = [d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str)]
            flag = next((d for d in decls if d.startswith("--")), param.name).lstrip("-")
            name = flag.replace("-", "_")
            info.envvar = info.envvar or ENV_PREFIX + name.upper()
            info.show_envvar = True
            field = SETTINGS_FIELDS.get(param.name)
            if field is not None:
                shown = field.default if field.default != "" else _EMPTY_DEFAULTS.get(param.name)
                info.show_default = str(shown)
            elif name in _OTHER_DEFAULTS:
                info.show_default = _OTHER_DEFAULTS[name]
        params.append(param.replace(annotation=Annotated[(base, *infos)]))
    command.__signature__ = signature.replace(parameters=params)
    return command


def _neuron_command(role: str):
    def command(
        hparams_file: HParamsFile = None,
        assignments: SetOption = None,
        protocol: ProtocolOption = None,
        task: TaskOption = None,
        storage: Annotated[str | None, Opt(help="r2 | local | memory")] = None,
        storage_root: Annotated[str | None, Opt(help="local storage root")] = None,
        storage_direct_bytes: Annotated[
            int | None, Opt(help="local objects this large skip the page cache (0: none)")
        ] = None,
        s3_endpoint: Annotated[str | None, Opt(help="S3 endpoint instead of R2's")] = None,
        s3_request_checksum_calculation: Annotated[
            str | None, Opt(help="when_required (R2) | when_supported (checksum trailers)")
        ] = None,
        s3_client_cache_size: Annotated[
            int | None, Opt(help="idle S3 clients kept for the next window")
        ] = None,
        storage_client: Annotated[str | None, Opt(help="S3 client: boto3 | obstore")] = None,
        chain: Annotated[str | None, Opt(help="bittensor | fake | memory")] = None,
        chain_path: Annotated[str | None, Opt(help="the fake chain's file")] = None,
        block_time: Annotated[float | None, Opt(help="fake chain block time (s)")] = None,
        finality_lag: Annotated[
            int | None, Opt(help="blocks the fake chain's finalised block trails its head")
        ] = None,
        netuid: Annotated[int | None, Opt(help="subnet uid")] = None,
        network: Annotated[str | None, Opt(help="bittensor network")] = None,
        wallet_name: Annotated[str | None, Opt(help="bittensor wallet name")] = None,
        wallet_hotkey: Annotated[str | None, Opt(help="bittensor wallet hotkey")] = None,
        wallet_path: Annotated[str | None, Opt(help="where bittensor wallets live")] = None,
        hotkey: Annotated[str | None, Opt(help="hotkey (required on fake chains)")] = None,
        device: Annotated[str | None, Opt(help="torch device")] = None,
        state_dir: Annotated[str | None, Opt(help="where to keep resume state")] = None,
        events: Annotated[str | None, Opt(help="append a JSON line per window here")] = None,
        block_poll_interval: Annotated[
            float | None, Opt(help="seconds between block polls")
        ] = None,
        clock_check_windows: Annotated[
            int | None, Opt(help="windows between clock-offset and finality-lag checks")
        ] = None,
        faulty: Annotated[
            str | None, Opt(help="miner misbehaviour: late|garbage|silent|copier")
        ] = None,
        windows: Annotated[int | None, Opt(help="stop after this many windows")] = None,
        threads: Annotated[int | None, Opt(help="torch CPU threads")] = None,
        log_level: Annotated[
            str, Opt(help="this project's logging level (INFO: a line per window)")
        ] = "INFO",
        log_format: Annotated[str, Opt(help="text | json (one object per line)")] = "text",
        vendor_log_level: Annotated[
            str, Opt(help="level of boto3, botocore, bittensor... (whatever --log-level)")
        ] = "WARNING",
        metrics_port: Annotated[
            int | None, Opt(help="serve Prometheus metrics on 127.0.0.1:PORT (0: off)")
        ] = None,
    ) -> None:
        _setup_logging(log_level, log_format, vendor_log_level)
        flags = _flags(
            storage=storage,
            storage_root=storage_root,
            storage_direct_bytes=storage_direct_bytes,
            s3_endpoint=s3_endpoint,
            s3_request_checksum_calculation=s3_request_checksum_calculation,
            s3_client_cache_size=s3_client_cache_size,
            storage_client=storage_client,
            chain=chain,
            chain_path=chain_path,
            block_time=block_time,
            finality_lag=finality_lag,
            netuid=netuid,
            network=network,
            wallet_name=wallet_name,
            wallet_hotkey=wallet_hotkey,
            wallet_path=wallet_path,
            hotkey=hotkey,
            device=device,
            state_dir=state_dir,
            events=events,
            block_poll_interval=block_poll_interval,
            clock_check_windows=clock_check_windows,
            faulty=faulty,
            metrics_port=metrics_port,
        )
        _neuron(role, hparams_file, assignments, flags, windows, threads, log_level, protocol, task)

    command.__doc__ = f"Run a {role} (settings: flags > TEMPLAR_* env > defaults)."
    return _conventions(command, role)


app.command("miner")(_neuron_command("miner"))
app.command("validator")(_neuron_command("validator"))
app.add_typer(local_app, name="local")


@app.command()
def warmup() -> None:
    """Compile the gather's CPU kernels into numba's cache (make's install runs this)."""
    from neurons.warmup import warm  # torch and numba load here, not for `version`

    console.print("compiling the gather's CPU kernels (numba; once, then cached) ...")
    console.print(warm().describe(), highlight=False, soft_wrap=True)


@app.command()
def localnet(
    miners: Annotated[int, Opt(help="honest miners")] = 3,
    windows: Annotated[int, Opt(help="stop after this many validator windows")] = 30,
    faulty: Annotated[
        str,
        Opt(
            help="add one misbehaving miner per mode, comma-separated: late, garbage, silent, "
            "copier (e.g. garbage,copier; empty: none)"
        ),
    ] = "",
    block_time: Annotated[float, Opt(help="seconds per block")] = 0.5,
    storage: Annotated[
        str, Opt(help="local (directories) | s3 (buckets on a SeaweedFS started on 127.0.0.1)")
    ] = "local",
    directory: Annotated[
        Path | None, Opt("--dir", help="run directory (default: a new temp directory)")
    ] = None,
    json_out: Annotated[Path | None, Opt("--json", help="write the table as JSON here")] = None,
    plot: Annotated[
        Path, Opt("--plot", help="the loss chart (PNG): one line per neuron, by window")
    ] = Path("loss.png"),
    hparams_file: HParamsFile = None,
    assignments: SetOption = None,
    protocol: ProtocolOption = None,
    task: TaskOption = None,
) -> None:
    """Run one validator and several miners on this machine (separate processes)."""
    from neurons.localnet import LocalnetOptions, run_localnet

    try:
        overrides = _overrides(assignments, protocol)
        if task:
            overrides["task"] = task
        options = LocalnetOptions(
            miners=miners,
            windows=windows,
            faulty=faulty,
            block_time=block_time,
            storage=storage,
            directory=directory,
            json_out=json_out,
            plot=plot,
            hparams_file=hparams_file,
            overrides=overrides,
        )
    except ValueError as exc:  # ConfigError, or an option out of range (attrs validators)
        err_console.print(f"[red]configuration error[/red] {exc.args[0] if exc.args else exc}")
        raise typer.Exit(2) from None
    try:
        code = run_localnet(options, console)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error[/red] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
