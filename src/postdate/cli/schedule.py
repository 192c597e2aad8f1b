"""`postdate schedule`: what is coming and what happened; cancel, reschedule, trim.

Every command works on the schedule store's database (the outbox's): ``--db URL``, else
``POSTDATE_SCHEDULE_URL``, else ``DATABASE_URL`` (see :mod:`postdate.cli.database`).
Times are printed in UTC; a time given without an offset is taken as UTC.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from postdate.cli._errors import CliTyper, fail
from postdate.cli.common import Json, parse_span, parse_time, print_json
from postdate.cli.database import Db, database_url, on_schedule, shown
from postdate.cli.schedule_cancel import CancelWhere, cancel, cancel_report
from postdate.cli.schedule_view import (
    BUCKETS,
    Bucket,
    iso,
    show_history,
    show_overview,
    show_timeline,
    show_upcoming,
    utc_time,
)
from postdate.schedule import ScheduleStore, Timeline, Trimmed

app = CliTyper(help="The schedule: what is coming, what happened; cancel, reschedule.")

_TIME_HELP = "ISO 8601, e.g. 2026-11-25T17:00Z; without an offset it is UTC"

Type = Annotated[str | None, typer.Option("--type", help="only commands of this type")]
CorrelationId = Annotated[
    str | None, typer.Option("--correlation-id", "-c", help="only this entity's commands")
]
Queue = Annotated[str | None, typer.Option("--queue", help="only commands for this queue")]
DueAfter = Annotated[str | None, typer.Option(help=f"due at or after this time ({_TIME_HELP})")]
DueBefore = Annotated[str | None, typer.Option(help=f"due before this time ({_TIME_HELP})")]
Limit = Annotated[int, typer.Option(min=1, help="rows to print")]


@app.command("init")
def schedule_init(db: Db = None) -> None:
    """Create the outbox and schedule tables that are missing; upgrade an old SQLite
    tombstone table in place (its ids could come back after a trim)."""
    url = database_url(db)
    on_schedule(url, lambda store: store.create_tables())
    typer.echo(f"the schedule's tables are in place in {shown(url)}")


@app.command("upcoming")
def schedule_upcoming(
    db: Db = None,
    command_type: Type = None,
    correlation_id: CorrelationId = None,
    queue: Queue = None,
    after: DueAfter = None,
    before: DueBefore = None,
    limit: Limit = 100,
    as_json: Json = False,
) -> None:
    """Commands still to come (neither done nor cancelled), soonest due first; overdue
    ones too, unless --after is given."""
    since, until = parse_time(after, "--after"), parse_time(before, "--before")
    rows = on_schedule(
        database_url(db),
        lambda store: store.upcoming(
            correlation_id=correlation_id,
            command_type=command_type,
            queue=queue,
            after=since,
            before=until,
            limit=limit,
        ),
    )
    show_upcoming(rows, limit, as_json)


@app.command("history")
def schedule_history(
    db: Db = None,
    command_type: Type = None,
    correlation_id: CorrelationId = None,
    outcome: Annotated[
        str | None, typer.Option(help="handled, retried, skipped, poisoned or cancelled")
    ] = None,
    after: Annotated[
        str | None, typer.Option(help=f"recorded at or after this time ({_TIME_HELP})")
    ] = None,
    before: Annotated[
        str | None, typer.Option(help=f"recorded before this time ({_TIME_HELP})")
    ] = None,
    limit: Limit = 100,
    as_json: Json = False,
) -> None:
    """Recorded outcomes of deliveries, newest first."""
    since, until = parse_time(after, "--after"), parse_time(before, "--before")
    entries = on_schedule(
        database_url(db),
        lambda store: store.history(
            correlation_id=correlation_id,
            command_type=command_type,
            outcome=outcome,
            after=since,
            before=until,
            limit=limit,
        ),
    )
    show_history(entries, limit, as_json)


@app.command("overview")
def schedule_overview(
    db: Db = None,
    bucket: Annotated[Bucket, typer.Option(help="one row per hour or day (UTC)")] = Bucket.HOUR,
    command_type: Type = None,
    after: Annotated[
        str | None,
        typer.Option(help=f"from this time on (when recorded, or due) ({_TIME_HELP})"),
    ] = None,
    before: Annotated[str | None, typer.Option(help=f"before this time ({_TIME_HELP})")] = None,
    as_json: Json = False,
) -> None:
    """Counts per hour or day and command type: outcomes recorded, and commands still to
    come by their due time ("scheduled")."""
    since, until = parse_time(after, "--after"), parse_time(before, "--before")
    counts = on_schedule(
        database_url(db),
        lambda store: store.overview(
            BUCKETS[bucket], after=since, before=until, command_type=command_type
        ),
    )
    show_overview(counts, bucket, as_json)


@app.command("timeline")
def schedule_timeline(
    message_id: Annotated[str, typer.Argument(help="the command's message id")],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Everything known of one command: scheduled, due, published, cancelled (and why),
    and every outcome (exit 1 when nothing is known of it)."""
    found = on_schedule(database_url(db), lambda store: store.timeline(message_id))
    show_timeline(found, as_json)


@app.command("cancel")
def schedule_cancel(
    message_ids: Annotated[
        list[str] | None, typer.Argument(help="message ids (or give filters instead)")
    ] = None,
    correlation_id: CorrelationId = None,
    command_type: Type = None,
    queue: Queue = None,
    after: DueAfter = None,
    before: DueBefore = None,
    unscheduled: Annotated[
        bool,
        typer.Option(
            "--unscheduled", help="cancel ids not in the outbox too (sent with Publisher.send)"
        ),
    ] = False,
    reason: Annotated[str, typer.Option(help="recorded with the cancel; shown by timeline")] = "",
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Cancel commands by id, or every upcoming one the filters match.

    Waits until every live worker has seen the cancel, then says per id whether it was in
    time. Exit 1 when one was too late (handled, or its handler running) or is unknown.
    """
    filters: dict[str, Any] = {
        "correlation_id": correlation_id,
        "command_type": command_type,
        "queue": queue,
        "after": parse_time(after, "--after"),
        "before": parse_time(before, "--before"),
    }
    given = any(value is not None for value in filters.values())
    if not message_ids and not given:
        fail("say what to cancel: message ids, or --correlation-id/--type/--queue/--after/--before")
    if message_ids and given:
        fail("give message ids or filters, not both")
    if unscheduled and not message_ids:
        fail("--unscheduled applies to message ids, not to filters")
    what = CancelWhere(tuple(message_ids or ()), not unscheduled, filters, reason)
    results = on_schedule(database_url(db), lambda store: cancel(store, what, not as_json))
    cancel_report(results, as_json)


@app.command("reschedule")
def schedule_reschedule(
    message_id: Annotated[str, typer.Argument(help="the scheduled command's message id")],
    delay: Annotated[
        str | None, typer.Option(help="due this long from now: 30s, 10m, 2h, 7d")
    ] = None,
    at: Annotated[str | None, typer.Option(help=f"due at this time ({_TIME_HELP})")] = None,
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Move a scheduled command to a new due time.

    It travels on under a new message id (printed); the old one is cancelled. Exit 1 when
    it is unknown, cancelled already, or too late (handled or running).
    """
    if (delay is None) == (at is None):
        fail("give the new due time: --delay (e.g. 2h) or --at ISO, one of them")
    span = parse_span(delay, "--delay") if delay is not None else None
    due = parse_time(at, "--at")

    async def reschedule(store: ScheduleStore) -> Timeline:
        new_id = await store.reschedule(message_id, span, at=due)
        return await store.timeline(new_id)

    moved = on_schedule(database_url(db), reschedule)
    if as_json:
        print_json(
            {
                "message_id": message_id,
                "rescheduled_as": moved.message_id,
                "due_at": iso(moved.due_at),
            }
        )
        return
    typer.echo(f"rescheduled {message_id} as {moved.message_id}, due {utc_time(moved.due_at)} UTC")


@app.command("trim")
def schedule_trim(
    older_than: Annotated[
        str, typer.Option(help="what ended this long ago: 30d, 12h (history, done rows)")
    ],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Delete history older than --older-than, and the outbox rows and cancels of commands
    that ended before then. What is still to come is kept."""
    span = parse_span(older_than, "--older-than")
    trimmed: Trimmed = on_schedule(database_url(db), lambda store: store.trim(span))
    if as_json:
        print_json(
            {"history": trimmed.history, "outbox": trimmed.outbox, "cancels": trimmed.cancels}
        )
        return
    typer.echo(
        f"trimmed {trimmed.history:,} history rows, {trimmed.outbox:,} outbox rows and "
        f"{trimmed.cancels:,} cancels older than {older_than}"
    )
