"""The `templar-comms` command line."""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from neurons.config import ConfigError, load_hparams, load_settings, parse_assignment

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
Opt = typer.Option


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


def _neuron(
    role: str,
    hparams_file: Path | None,
    assignments: list[str] | None,
    flags: dict,
    max_windows: int | None,
    threads: int | None,
) -> None:
    from neurons.runner import run_neuron  # torch loads here, not for `version`

    try:
        overrides = dict(parse_assignment(a) for a in assignments or [])
        hparams = load_hparams(hparams_file, overrides)
        settings = load_settings(os.environ, flags)
        done = run_neuron(role, hparams, settings, max_windows=max_windows, threads=threads)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error[/red] {exc}")
        raise typer.Exit(2) from None
    err_console.print(f"{role}: stopped after {done} windows")


def _flags(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def version() -> None:
    """Print the installed version."""
    console.print(metadata.version("templar-comms"))


def _neuron_command(role: str):
    def command(
        hparams_file: HParamsFile = None,
        assignments: SetOption = None,
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
        log_level: Annotated[str, Opt(help="logging level")] = "WARNING",
    ) -> None:
        _setup_logging(log_level)
        flags = _flags(
            storage=storage,
            storage_root=storage_root,
            storage_direct_bytes=storage_direct_bytes,
            s3_endpoint=s3_endpoint,
            s3_request_checksum_calculation=s3_request_checksum_calculation,
            s3_client_cache_size=s3_client_cache_size,
            chain=chain,
            chain_path=chain_path,
            block_time=block_time,
            finality_lag=finality_lag,
            netuid=netuid,
            network=network,
            wallet_name=wallet_name,
            wallet_hotkey=wallet_hotkey,
            hotkey=hotkey,
            device=device,
            state_dir=state_dir,
            events=events,
            block_poll_interval=block_poll_interval,
            clock_check_windows=clock_check_windows,
            faulty=faulty,
        )
        _neuron(role, hparams_file, assignments, flags, windows, threads)

    command.__doc__ = f"Run a {role} (settings: flags > TEMPLAR_* env > defaults)."
    return command


app.command("miner")(_neuron_command("miner"))
app.command("validator")(_neuron_command("validator"))


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
) -> None:
    """Run one validator and several miners on this machine (separate processes)."""
    from neurons.localnet import LocalnetOptions, run_localnet

    try:
        overrides = dict(parse_assignment(a) for a in assignments or [])
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
