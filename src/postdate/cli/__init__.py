"""The `postdate` command line: worker, topology, poison, unroutable, status, schedule."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from postdate._errors import PostdateError
from postdate._version import __version__
from postdate.cli import poison, schedule, status, topology, unroutable, worker

app = typer.Typer(help="Send commands into the future on RabbitMQ.", no_args_is_help=True)
app.command()(worker.worker)
app.command()(status.status)
app.add_typer(topology.app, name="topology")
app.add_typer(poison.app, name="poison")
app.add_typer(unroutable.app, name="unroutable")
app.add_typer(schedule.app, name="schedule")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"postdate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Send commands into the future on RabbitMQ."""


__all__ = ["app", "main"]


def main() -> None:
    """The ``postdate`` command; a postdate error (bad settings, unreachable broker) is
    one line on stderr and exit code 2, not a traceback."""
    try:
        app()
    except PostdateError as exc:
        typer.secho(f"error: {' '.join(str(exc).split())}", err=True, fg=typer.colors.RED)
        sys.exit(2)
