"""The `postdate` command line: worker, relay, topology, poison, unroutable, status,
schedule."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from postdate._version import __version__
from postdate.cli import poison, status, topology, unroutable, worker
from postdate.cli._errors import CliTyper, describe, fail, show

app = CliTyper(help="Send commands into the future on RabbitMQ.", no_args_is_help=True)
app.command()(worker.worker)
app.command()(status.status)
app.add_typer(topology.app, name="topology")
app.add_typer(poison.app, name="poison")
app.add_typer(unroutable.app, name="unroutable")


def _add_outbox_commands() -> None:
    """``relay`` and ``schedule``, which need the sql extra: without it, each says which
    extra to install (one line, exit code 2) instead of the whole CLI failing to start."""
    try:
        from postdate.cli import relay, schedule
    except ModuleNotFoundError as missing:
        needs = str(missing)
        loose = {"allow_extra_args": True, "ignore_unknown_options": True}
        for name in ("relay", "schedule"):
            app.command(name, help=f"(needs the sql extra) {needs}", context_settings=loose)(
                lambda: fail(needs)
            )
        return
    app.command()(relay.relay)
    app.add_typer(schedule.app, name="schedule")


_add_outbox_commands()


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
    """The ``postdate`` command. Every command says its errors in one line itself
    (:mod:`postdate.cli._errors`); one that escapes a command (e.g. from a callback) is
    said the same way here: ``error: ...`` on stderr, exit code 2 (1 for a failed check),
    not a traceback."""
    try:
        app()
    except Exception as exc:
        failure = describe(exc)
        if failure is None:
            raise
        show(failure)
        sys.exit(failure.code)
