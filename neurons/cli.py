"""The `templar-comms` command line."""

from __future__ import annotations

from importlib import metadata

import typer
from rich.console import Console

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="templar-comms: gradients, peers and checkpoints for decentralised training.",
)
console = Console()


@app.command()
def version() -> None:
    """Print the installed version."""
    console.print(metadata.version("templar-comms"))


@app.command()
def localnet() -> None:
    """Run one validator and several miners on this machine (not yet implemented)."""
    console.print(
        "[yellow]localnet: not yet[/yellow] - it arrives with the neurons issue (#9). "
        "Meanwhile `make test` exercises the foundation."
    )


if __name__ == "__main__":
    app()
