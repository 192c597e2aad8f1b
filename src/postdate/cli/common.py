"""What every `postdate` subcommand shares: loading the app, running on the broker,
parsing times and ages. Errors become one line and an exit code in
:mod:`postdate.cli._errors`."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from aio_pika.abc import AbstractConnection
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from postdate._errors import InvalidArgument, PostdateError
from postdate._settings import BackendName, Settings
from postdate.broker._connection import connect_plain
from postdate.broker._topology import Topology, ladder_topology
from postdate.cli._errors import (
    EXIT_FOUND_NOTHING,
    Failure,
    describe,
    fail,
)
from postdate.consume._consumer import Consumer
from postdate.delay._plugin import plugin_topology
from postdate.observe._logs import configure_logging

T = TypeVar("T")

AppSpec = Annotated[str | None, typer.Argument(help="MODULE:APP of a postdate Consumer")]
Json = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]

# An operator's command fails fast when the broker is down, unless POSTDATE_CONNECT_*
# say otherwise; a worker keeps the settings' patient defaults.
CLI_CONNECT_ATTEMPTS = 2
CLI_CONNECT_TIMEOUT = 5.0


def print_json(value: Any) -> None:
    """Print ``value`` as one JSON document on stdout."""
    typer.echo(json.dumps(value, indent=2, default=str))


@contextmanager
def progress_bar(label: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (when it is a terminal); yields the callback that takes
    how many items are done, of how many."""
    console = Console(stderr=True)
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not (enabled and console.is_terminal),
    ) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def parse_age(text: str | None, what: str = "age") -> timedelta | None:
    """``30s``, ``10m``, ``2h``, ``7d`` as a timedelta (None stays None); ``what`` names
    it in the error.

    Raises:
        InvalidArgument: not a number followed by s, m, h or d.
    """
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit():
        raise InvalidArgument(f"{what} {text!r} is not like 30s, 10m, 2h or 7d")
    return timedelta(seconds=int(number) * units[unit])


def parse_span(text: str, option: str) -> timedelta:
    """``option``'s ``30s``, ``10m``, ``2h`` or ``7d``; exit code 2 when it is not one."""
    try:
        span = parse_age(text, option)
    except InvalidArgument as exc:
        fail(str(exc))
    assert span is not None
    return span


def parse_time(text: str | None, option: str) -> datetime | None:
    """``option``'s ISO 8601 time (None stays None); without an offset it is UTC. Exit
    code 2 when it is not one."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text!r} is not an ISO 8601 time, e.g. 2026-11-25T17:00Z")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def load_app(spec: str) -> Consumer:
    """Import ``module:attribute`` and return the Consumer it names.

    Raises:
        InvalidArgument: malformed spec, module not importable, or not a Consumer.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise InvalidArgument(f"{spec!r} is not MODULE:APP, e.g. consumers.example:app")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an app module that fails to import is the user's to fix
        raise InvalidArgument(f"cannot import {module_name!r}: {exc!r}") from exc
    consumer = getattr(module, attribute, None)
    if not isinstance(consumer, Consumer):
        raise InvalidArgument(f"{spec!r} is not a postdate Consumer")
    return consumer


def run_async(
    coroutine: Callable[[], Awaitable[T]],
    *,
    found_nothing: tuple[type[PostdateError], ...] = (),
    failed: Callable[[Exception], NoReturn] | None = None,
) -> T:
    """Run ``coroutine()``.

    Raises:
        Failure: a ``found_nothing`` error (exit code 1), or what ``failed`` (by default
            :func:`broker_failed`) made of any other error (exit code 2).
        typer.Exit: our reader went away (``| head``): exit code 1, nothing said.
        Exception: an error ``failed`` does not recognise (a bug), raised again.
    """
    try:
        return asyncio.run(coroutine())  # type: ignore[arg-type]
    except found_nothing as exc:
        raise Failure(str(exc), EXIT_FOUND_NOTHING) from None
    except (Failure, PostdateError):
        raise
    except BrokenPipeError:  # our reader went away (`| head`): nothing left to say
        sys.stderr.close()
        raise typer.Exit(EXIT_FOUND_NOTHING) from None
    except Exception as exc:
        (failed or broker_failed)(exc)


def broker_failed(exc: Exception) -> NoReturn:
    """A broker error postdate did not expect, or a lost connection, as one line and exit
    code 2.

    Raises:
        Failure: ``exc`` is a broker error or a lost connection.
        Exception: ``exc`` itself, when it is neither.
    """
    failure = describe(exc)
    if failure is None:
        raise exc
    if str(failure).startswith("the connection to the broker was lost"):
        failure = Failure(f"{failure}; what was not done stays parked")
    raise failure from None


def on_broker(
    settings: Settings, name: str, use: Callable[[AbstractConnection], Awaitable[T]]
) -> T:
    """Connect, run ``use`` on the connection, close; postdate errors become exit code 2."""

    async def session() -> T:
        async with await cli_connect(settings, name) as connection:
            return await use(connection)

    return run_async(session)


async def cli_connect(settings: Settings, name: str) -> AbstractConnection:
    """A connection for an operator's command: few attempts, short timeouts, no log lines
    before the one-line error (unless ``POSTDATE_CONNECT_*`` are set), and no reconnect:
    a run whose connection is lost ends and says so.

    Raises:
        BrokerUnavailable: the broker cannot be reached.
    """
    configure_logging("ERROR")
    for library in ("aio_pika", "aiormq"):  # their retries are not the operator's news
        logging.getLogger(library).setLevel(logging.CRITICAL)
    given = settings.model_fields_set
    return await connect_plain(
        settings.url,
        name=f"postdate-cli-{name}",
        attempts=settings.connect_attempts if "connect_attempts" in given else CLI_CONNECT_ATTEMPTS,
        attempt_timeout=(
            settings.connect_timeout if "connect_timeout" in given else CLI_CONNECT_TIMEOUT
        ),
    )


def topology_of(settings: Settings, spec: str | None) -> Topology:
    """The ladder, plus the app's queues when ``spec`` (MODULE:APP) is given, plus, with
    ``POSTDATE_BACKEND=plugin``, the plugin's exchange and the app's queues' bindings on it
    (``auto`` cannot know without asking the broker: it shows the ladder's)."""
    queues: tuple[str, ...] = ()
    if spec is None:
        topology = ladder_topology(settings.prefix)
    else:
        app = load_app(spec)
        topology = app.topology(settings.prefix, settings.delivery_limit)
        queues = tuple(sorted(app.queues()))
    if settings.backend is BackendName.PLUGIN:
        topology = topology + plugin_topology(settings.prefix, queues)
    return topology


def shared_topology(settings: Settings) -> Topology:
    """What every app of the prefix shares: the ladder, and with
    ``POSTDATE_BACKEND=plugin`` the plugin's exchange."""
    return topology_of(settings, None)


def overdue_note(count: int) -> str:
    """``3 overdue commands (due, not published: is a relay running?)``."""
    noun = "command" if count == 1 else "commands"
    return f"{count:,} overdue {noun} (due, not published: is a relay running?)"
