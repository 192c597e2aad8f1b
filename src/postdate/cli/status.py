"""`postdate status`: what waits where; exit 1 when something waits for an operator.

With ``POSTDATE_SCHEDULE_URL`` set it also counts the outbox's overdue commands: due, and
still not published (no relay is running)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated

import typer
from aio_pika.abc import AbstractConnection
from rich.console import Console

from postdate._settings import Settings
from postdate.broker._declare import queue_states
from postdate.broker._registry import registered
from postdate.broker._topology import Names, poison_queue, retry_queue
from postdate.cli._errors import EXIT_FOUND_NOTHING
from postdate.cli.common import (
    AppSpec,
    Json,
    cli_connect,
    load_app,
    overdue_note,
    print_json,
    run_async,
)
from postdate.consume._consumer import Consumer
from postdate.delay._ladder import LEVELS


@dataclass
class Depth:
    """A queue's messages and consumers (None: the queue does not exist)."""

    queue: str
    messages: int | None
    consumers: int | None


@dataclass
class CommandQueue:
    """A command queue, its retry tiers and its poison queue."""

    queue: Depth
    poison: Depth
    retries: list[Depth] = field(default_factory=list)


@dataclass
class ScheduleCheck:
    """The outbox's overdue commands (None when they could not be counted: ``error``)."""

    overdue: int | None
    error: str | None = None


@dataclass
class Report:
    """Everything ``status`` shows."""

    ladder: list[Depth]
    unroutable: Depth
    queues: list[CommandQueue]
    schedule: ScheduleCheck | None = None  # without POSTDATE_SCHEDULE_URL: not looked at

    @property
    def waiting_for_an_operator(self) -> list[str]:
        """Poison and catch-all queues that hold messages, or are being read (a run holds
        its messages unacked, so they are not counted as ready)."""
        return [depth.queue for depth in self.parking if depth.messages or depth.consumers]

    @property
    def parking(self) -> list[Depth]:
        """The catch-all queue and every poison queue."""
        return [self.unroutable, *(entry.poison for entry in self.queues)]

    @property
    def pending(self) -> int:
        """Commands on their way down the ladder."""
        return sum(level.messages or 0 for level in self.ladder)


async def _depth(connection: AbstractConnection, queue: str) -> Depth:
    state = (await queue_states(connection, [queue]))[queue]
    if state is None:
        return Depth(queue, None, None)
    return Depth(queue, state.messages, state.consumers)


async def _report(connection: AbstractConnection, prefix: str, app: Consumer | None) -> Report:
    names = Names(prefix)
    ladder = [await _depth(connection, names.delay_queue(level)) for level in range(LEVELS)]
    queues = app.queues() if app is not None else await registered(connection, prefix)
    entries = []
    for queue in queues:
        tiers = app.tiers(queue) if app is not None else ()
        entries.append(
            CommandQueue(
                await _depth(connection, queue),
                await _depth(connection, poison_queue(queue)),
                [await _depth(connection, retry_queue(queue, tier)) for tier in tiers],
            )
        )
    return Report(ladder, await _depth(connection, names.unroutable), entries)


async def _schedule_check(url: str) -> ScheduleCheck:
    """Count the overdue commands in the outbox at ``url``; a database that cannot be read
    is said in ``error``."""
    try:  # the schedule needs the sql extra: status works without it
        from postdate.cli.status_schedule import count_overdue
    except ModuleNotFoundError as missing:
        return ScheduleCheck(None, str(missing))
    count, problem = await count_overdue(url)
    return ScheduleCheck(count, problem)


def _print_schedule(check: ScheduleCheck | None) -> None:
    if check is None:
        return
    if check.overdue is None:
        typer.secho(
            f"schedule: cannot count overdue commands: {check.error}", fg=typer.colors.YELLOW
        )
    elif check.overdue:
        typer.secho(f"schedule: {overdue_note(check.overdue)}", fg=typer.colors.YELLOW)
    else:
        typer.echo("schedule: no overdue commands")


def _count(depth: Depth) -> str:
    return "missing" if depth.messages is None else f"{depth.messages:,}"


def _print(report: Report, all_levels: bool) -> None:
    levels = [level for level in report.ladder if all_levels or level.messages]
    typer.echo(f"ladder: {report.pending:,} pending in {len(levels)} non-empty levels")
    for level in levels:
        typer.echo(f"  {level.queue:<58} {_count(level):>9}")
    typer.echo(f"{'queue':<60} {'messages':>9} {'consumers':>9} {'poison':>9}")
    for entry in report.queues:
        consumers = "-" if entry.queue.consumers is None else str(entry.queue.consumers)
        typer.echo(
            f"{entry.queue.queue:<60} {_count(entry.queue):>9} {consumers:>9} "
            f"{_count(entry.poison):>9}"
        )
        for retry in entry.retries:
            typer.echo(f"  {retry.queue:<58} {_count(retry):>9}")
    typer.echo(f"{report.unroutable.queue:<60} {_count(report.unroutable):>9}")
    parked = {
        depth.queue: depth for depth in [report.unroutable, *(e.poison for e in report.queues)]
    }
    for queue in report.waiting_for_an_operator:
        doing = "messages wait in" if parked[queue].messages else "a run is reading"
        typer.secho(f"attention: {doing} {queue}", fg=typer.colors.YELLOW)
    _print_schedule(report.schedule)


def _as_json(report: Report) -> dict[str, object]:
    return {
        "pending": report.pending,
        "ladder": [asdict(level) for level in report.ladder],
        "unroutable": asdict(report.unroutable),
        "queues": [asdict(entry) for entry in report.queues],
        "attention": report.waiting_for_an_operator,
        "schedule": None if report.schedule is None else asdict(report.schedule),
    }


def status(
    spec: AppSpec = None,
    all_levels: Annotated[bool, typer.Option(help="show empty ladder levels too")] = False,
    watch: Annotated[float | None, typer.Option(min=0.5, help="refresh every N seconds")] = None,
    as_json: Json = False,
) -> None:
    """What waits in the ladder, the command queues (the app's, or every registered one)
    and their poison queues. Exit 1 when messages wait in a poison or catch-all queue."""
    settings = Settings.load()
    app = load_app(spec) if spec is not None else None

    async def look() -> Report:
        async with await cli_connect(settings, "status") as connection:
            while True:
                report = await _report(connection, settings.prefix, app)
                if settings.schedule_url is not None:
                    report.schedule = await _schedule_check(settings.schedule_url)
                if watch is None:
                    return report
                if not as_json:
                    Console().clear()
                    typer.echo(time.strftime("%H:%M:%S"))
                _show(report, all_levels, as_json)
                await asyncio.sleep(watch)

    try:
        report = run_async(look)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    _show(report, all_levels, as_json)
    if report.waiting_for_an_operator:
        raise typer.Exit(EXIT_FOUND_NOTHING)


def _show(report: Report, all_levels: bool, as_json: bool) -> None:
    if as_json:
        print_json(_as_json(report))
    else:
        _print(report, all_levels)
