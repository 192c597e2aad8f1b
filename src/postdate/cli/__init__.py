"""The `postdate` command line: worker, topology, poison, unroutable, status, schedule."""

from __future__ import annotations

import sys

import typer

from postdate.cli import poison, schedule, status, topology, unroutable, worker
from postdate.errors import PostdateError

app = typer.Typer(help="Send commands into the future on RabbitMQ.", no_args_is_help=True)
app.command()(worker.worker)
app.command()(status.status)
app.add_typer(topology.app, name="topology")
app.add_typer(poison.app, name="poison")
app.add_typer(unroutable.app, name="unroutable")
app.add_typer(schedule.app, name="schedule")

__all__ = ["app", "main"]


def main() -> None:
    """The ``postdate`` command; a postdate error (bad settings, unreachable broker) is
    one line on stderr and exit code 2, not a traceback."""
    try:
        app()
    except PostdateError as exc:
        typer.secho(f"error: {' '.join(str(exc).split())}", err=True, fg=typer.colors.RED)
        sys.exit(2)
