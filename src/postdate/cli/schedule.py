"""`postdate schedule`: what is coming and what happened; cancel, reschedule, trim.

Every command works on the schedule store's database (the outbox's): ``--db URL``, else
``POSTDATE_SCHEDULE_URL``, else ``DATABASE_URL`` (an SQLAlchemy async URL, e.g.
``sqlite+aiosqlite:///orders.db`` or ``postgresql+asyncpg://host/db``). Times are printed
in UTC; a time given without an offset is taken as UTC.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker

from postdate.cli.common import (
    CLI_CONNECT_TIMEOUT,
    EXIT_FOUND_NOTHING,
    Json,
    fail,
    parse_age,
    print_json,
    progress_bar,
)
from postdate.errors import (
    CancelTooLate,
    CommandCancelled,
    InvalidArgument,
    PostdateError,
    UnknownCommand,
)
from postdate.schedule import (
    CancelResult,
    HistoryEntry,
    OutcomeCount,
    Scheduled,
    ScheduleStore,
    Timeline,
    Trimmed,
    make_engine,
)
from postdate.schedule.cancels import cancel_ids
from postdate.settings import Settings

T = TypeVar("T")

app = typer.Typer(help="The schedule: what is coming, what happened; cancel, reschedule.")

CANCEL_CHUNK = 100  # ids per cancel transaction (and progress step)
UNKNOWN = "unknown"  # the status of an id that was never scheduled, in `cancel`'s report
OUTCOME_ORDER = ("scheduled", "handled", "retried", "skipped", "poisoned", "cancelled")

_TIME_HELP = "ISO 8601, e.g. 2026-11-25T17:00Z; without an offset it is UTC"
Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="the schedule's database (SQLAlchemy async URL); "
        "default POSTDATE_SCHEDULE_URL, else DATABASE_URL",
        show_default=False,
    ),
]
Type = Annotated[str | None, typer.Option("--type", help="only commands of this type")]
CorrelationId = Annotated[
    str | None, typer.Option("--correlation-id", "-c", help="only this entity's commands")
]
Queue = Annotated[str | None, typer.Option("--queue", help="only commands for this queue")]
DueAfter = Annotated[str | None, typer.Option(help=f"due at or after this time ({_TIME_HELP})")]
DueBefore = Annotated[str | None, typer.Option(help=f"due before this time ({_TIME_HELP})")]
Limit = Annotated[int, typer.Option(min=1, help="rows to print")]


class Bucket(StrEnum):
    """The width of one row of the overview."""

    HOUR = "hour"
    DAY = "day"


BUCKETS = {Bucket.HOUR: timedelta(hours=1), Bucket.DAY: timedelta(days=1)}


# --- the database ---------------------------------------------------------------------------


def database_url(given: str | None) -> str:
    """``--db``, else ``POSTDATE_SCHEDULE_URL``, else ``DATABASE_URL``; exit 2 without one."""
    url = given or Settings.load().schedule_url or os.environ.get("DATABASE_URL")
    if not url:
        fail(
            "no schedule database: give --db URL or set POSTDATE_SCHEDULE_URL (or "
            "DATABASE_URL), e.g. sqlite+aiosqlite:///orders.db"
        )
    return url


def shown(url: str) -> str:
    """``url`` without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)


def engine_options(url: str) -> dict[str, Any]:
    """What an operator's engine needs beyond :func:`make_engine`'s: PostgreSQL that cannot
    be reached fails in seconds, as the broker does.

    Raises:
        sqlalchemy.exc.ArgumentError: ``url`` is not a database URL.
    """
    if make_url(url).drivername == "postgresql+asyncpg":
        return {"connect_args": {"timeout": CLI_CONNECT_TIMEOUT}}
    return {}


def on_schedule(url: str, use: Callable[[ScheduleStore], Awaitable[T]]) -> T:
    """Run ``use`` on a store for ``url``, then close it. An unknown id or a cancel too late
    is exit code 1; bad input, an unreachable database or missing tables exit code 2."""

    async def session() -> T:
        engine = make_engine(url, **engine_options(url))
        try:
            return await use(ScheduleStore(async_sessionmaker(engine, expire_on_commit=False)))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(session())
    except (UnknownCommand, CancelTooLate, CommandCancelled) as exc:
        fail(str(exc), EXIT_FOUND_NOTHING)
    except PostdateError as exc:
        fail(str(exc))
    except BrokenPipeError:  # our reader went away (`| head`): nothing left to say
        sys.stderr.close()
        raise typer.Exit(EXIT_FOUND_NOTHING) from None
    except Exception as exc:  # the database's and its driver's errors: one line each
        _database_failed(url, exc)


def _database_failed(url: str, exc: Exception) -> NoReturn:
    where = shown(url)
    if isinstance(exc, ArgumentError):
        fail(f"{where} is not a database URL: {exc}")
    if isinstance(exc, ImportError | SQLAlchemyError) and not isinstance(exc, DBAPIError):
        fail(
            f"cannot use {where}: {exc}; give an async driver, e.g. postgresql+asyncpg://... "
            "or sqlite+aiosqlite:///..."
        )
    text = str(exc.orig if isinstance(exc, DBAPIError) else exc) or type(exc).__name__
    lowered = text.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        fail(f"the schedule's tables are missing in {where}: run `postdate schedule init`")
    if isinstance(exc, OSError | TimeoutError):
        fail(f"cannot reach the schedule database {where}: {text.splitlines()[0]}")
    if isinstance(exc, DBAPIError):
        fail(f"the schedule database {where} refused: {text.splitlines()[0]}")
    raise exc


# --- parsing and printing -----------------------------------------------------------------


def parse_time(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time (None stays None); without an offset it is UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text!r} is not an ISO 8601 time, e.g. 2026-11-25T17:00Z")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_span(text: str, option: str) -> timedelta:
    """``30s``, ``10m``, ``2h`` or ``7d``."""
    try:
        span = parse_age(text)
    except InvalidArgument:
        fail(f"{option} {text!r} is not like 30s, 10m, 2h or 7d")
    assert span is not None
    return span


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: int = 0) -> None:
    """Columns as wide as their widest cell; the last ``right`` columns right-aligned.
    Nothing at all without rows."""
    if not rows:
        return
    widths = [
        max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)
    ]
    first_right = len(headers) - right
    for cells in [headers, *rows]:
        line = "  ".join(
            cell.rjust(width) if i >= first_right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        typer.echo(line.rstrip())


def _footer(count: int, limit: int, what: str) -> None:
    more = f" (the first {limit:,}: --limit shows more)" if count >= limit else ""
    typer.echo(f"{count:,} {what}{more}")


def _scheduled_json(row: Scheduled) -> dict[str, Any]:
    return {
        "message_id": row.message_id,
        "type": row.type,
        "queue": row.queue,
        "correlation_id": row.correlation_id,
        "due_at": _iso(row.due_at),
        "scheduled_at": _iso(row.scheduled_at),
        "published_at": _iso(row.published_at),
        "attempts": row.attempts,
    }


def _history_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": _iso(entry.at),
        "outcome": entry.outcome,
        "type": entry.type,
        "message_id": entry.message_id,
        "queue": entry.queue,
        "correlation_id": entry.correlation_id,
        "attempt": entry.attempt,
        "detail": entry.detail,
        "worker": entry.worker,
    }


# --- the commands ---------------------------------------------------------------------------


@app.command("init")
def schedule_init(db: Db = None) -> None:
    """Create the outbox and schedule tables that are missing (never alters one)."""
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
    if as_json:
        print_json({"upcoming": [_scheduled_json(row) for row in rows], "limit": limit})
        return
    print_table(
        ["due (UTC)", "type", "message id", "correlation id", "published", "attempts"],
        [
            [
                _time(row.due_at),
                row.type,
                row.message_id,
                row.correlation_id or "-",
                "yes" if row.published_at else "no",
                str(row.attempts),
            ]
            for row in rows
        ],
        right=1,
    )
    _footer(len(rows), limit, "upcoming")


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
    if as_json:
        print_json({"history": [_history_json(entry) for entry in entries], "limit": limit})
        return
    print_table(
        ["at (UTC)", "outcome", "type", "message id", "attempt", "detail", "worker"],
        [
            [
                _time(entry.at),
                entry.outcome,
                entry.type,
                entry.message_id,
                str(entry.attempt),
                _short(entry.detail) or "-",
                entry.worker,
            ]
            for entry in entries
        ],
    )
    _footer(len(entries), limit, "outcomes")


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
    rows = _pivot(counts)
    if as_json:
        print_json(
            {
                "bucket": bucket.value,
                "rows": [
                    {"start": _iso(start), "type": kind, "counts": by_outcome}
                    for (start, kind), by_outcome in rows.items()
                ],
            }
        )
        return
    if not rows:
        typer.echo("nothing recorded or scheduled in this window")
        return
    outcomes = _outcome_columns(counts)
    label = "%Y-%m-%d %H:00" if bucket is Bucket.HOUR else "%Y-%m-%d"
    print_table(
        [f"{bucket.value} (UTC)", "type", *outcomes],
        [
            [start.strftime(label), kind, *(f"{by_outcome.get(o, 0):,}" for o in outcomes)]
            for (start, kind), by_outcome in rows.items()
        ],
        right=len(outcomes),
    )


def _pivot(counts: Sequence[OutcomeCount]) -> dict[tuple[datetime, str], dict[str, int]]:
    rows: dict[tuple[datetime, str], dict[str, int]] = {}
    for count in counts:
        rows.setdefault((count.start, count.type), {})[count.outcome] = count.count
    return rows


def _outcome_columns(counts: Sequence[OutcomeCount]) -> list[str]:
    present = {count.outcome for count in counts}
    known = [outcome for outcome in OUTCOME_ORDER if outcome in present]
    return known + sorted(present - set(OUTCOME_ORDER))


@app.command("timeline")
def schedule_timeline(
    message_id: Annotated[str, typer.Argument(help="the command's message id")],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Everything known of one command: scheduled, due, published, cancelled (and why),
    and every outcome (exit 1 when nothing is known of it)."""
    found = on_schedule(database_url(db), lambda store: store.timeline(message_id))
    if as_json:
        print_json(_timeline_json(found))
        return
    cancelled = "-"
    if found.cancelled_at is not None:
        cancelled = _time(found.cancelled_at) + (
            f" ({found.cancel_reason})" if found.cancel_reason else ""
        )
    for key, value in (
        ("message id", found.message_id),
        ("type", found.type or "-"),
        ("correlation id", found.correlation_id or "-"),
        ("scheduled", _time(found.scheduled_at)),
        ("due", _time(found.due_at)),
        ("published", _time(found.published_at)),
        ("cancelled", cancelled),
        ("final", found.final.outcome if found.final else "-"),
    ):
        typer.echo(f"{key + ':':<16}{value}")
    if found.outcomes:
        typer.echo("outcomes (UTC):")
        print_table(
            ["  at", "outcome", "attempt", "worker", "detail"],
            [
                ["  " + _time(e.at), e.outcome, str(e.attempt), e.worker, _short(e.detail) or "-"]
                for e in found.outcomes
            ],
        )


def _timeline_json(found: Timeline) -> dict[str, Any]:
    return {
        "message_id": found.message_id,
        "type": found.type,
        "correlation_id": found.correlation_id,
        "scheduled_at": _iso(found.scheduled_at),
        "due_at": _iso(found.due_at),
        "published_at": _iso(found.published_at),
        "cancelled_at": _iso(found.cancelled_at),
        "cancel_reason": found.cancel_reason,
        "final": found.final.outcome if found.final else None,
        "outcomes": [_history_json(entry) for entry in found.outcomes],
    }


# --- cancel ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cancel:
    """One id's line in `cancel`'s report."""

    message_id: str
    status: str  # a CancelStatus, or "unknown"
    detail: str = ""
    unconfirmed: tuple[str, ...] = ()

    @classmethod
    def of(cls, result: CancelResult) -> Cancel:
        """The line of a cancel's result."""
        return cls(result.message_id, str(result.status), result.detail, result.unconfirmed)


@dataclass(frozen=True)
class CancelWhere:
    """What `cancel` was asked to cancel: ids, or the upcoming commands that match."""

    ids: tuple[str, ...]
    scheduled_only: bool
    filters: dict[str, Any]
    reason: str


async def _cancel(store: ScheduleStore, what: CancelWhere, progress_enabled: bool) -> list[Cancel]:
    unknown: list[str] = []
    if what.ids:
        targets = []
        for message_id in dict.fromkeys(what.ids):
            if what.scheduled_only and not await _known(store, message_id):
                unknown.append(message_id)
            else:
                targets.append(message_id)
    else:
        upcoming = await store.upcoming(**what.filters, limit=None)
        targets = [row.message_id for row in upcoming]
    done: dict[str, Cancel] = {mid: Cancel(mid, UNKNOWN) for mid in unknown}
    many = progress_enabled and len(targets) > CANCEL_CHUNK
    with progress_bar("cancelling", enabled=many) as progress:
        for start in range(0, len(targets), CANCEL_CHUNK):
            chunk = targets[start : start + CANCEL_CHUNK]
            for result in await cancel_ids(
                store.sessions, chunk, what.reason, store.confirm_timeout
            ):
                done[result.message_id] = Cancel.of(result)
            progress(start + len(chunk), len(targets))
    order = list(dict.fromkeys(what.ids)) if what.ids else targets
    return [done[mid] for mid in order]


async def _known(store: ScheduleStore, message_id: str) -> bool:
    try:
        await store.timeline(message_id)
    except UnknownCommand:
        return False
    return True


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
    results = on_schedule(database_url(db), lambda store: _cancel(store, what, not as_json))
    _cancel_report(results, as_json)


def _cancel_report(results: Sequence[Cancel], as_json: bool) -> None:
    by_status: dict[str, list[str]] = {}
    for result in results:
        by_status.setdefault(result.status, []).append(result.message_id)
    counts = {status: len(by_status.get(status, [])) for status in _STATUSES}
    if as_json:
        print_json(
            {
                **{key.replace("-", "_"): count for key, count in counts.items()},
                "results": [
                    {
                        "message_id": r.message_id,
                        "status": r.status,
                        "detail": r.detail,
                        "unconfirmed": list(r.unconfirmed),
                    }
                    for r in results
                ],
            }
        )
    else:
        for r in results:
            typer.echo(f"{r.message_id}  {r.status}{_cancel_detail(r)}")
        shown_statuses = _STATUSES if counts[UNKNOWN] else _STATUSES[:-1]
        typer.echo(", ".join(f"{s.replace('-', ' ')} {counts[s]:,}" for s in shown_statuses))
    problems = []
    if by_status.get("too-late"):
        problems.append(f"too late for {_some(by_status['too-late'])}")
    if by_status.get(UNKNOWN):
        problems.append(f"no scheduled command {_some(by_status[UNKNOWN], quote=True)}")
    if problems:
        fail("; ".join(problems), EXIT_FOUND_NOTHING)


_STATUSES = ("cancelled", "already-cancelled", "too-late", UNKNOWN)


def _cancel_detail(result: Cancel) -> str:
    if result.status == UNKNOWN:
        return "  not in the outbox, no outcome recorded (--unscheduled cancels it anyway)"
    if result.unconfirmed:
        workers = ", ".join(result.unconfirmed)
        return f"  (not yet confirmed by {workers}: they will not start it once they see it)"
    return f"  {result.detail}" if result.detail else ""


def _some(ids: Sequence[str], *, quote: bool = False, shown_at_most: int = 5) -> str:
    names = [repr(mid) if quote else mid for mid in ids[:shown_at_most]]
    more = f" and {len(ids) - shown_at_most:,} more" if len(ids) > shown_at_most else ""
    return ", ".join(names) + more


# --- reschedule and trim --------------------------------------------------------------------


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
                "due_at": _iso(moved.due_at),
            }
        )
        return
    typer.echo(f"rescheduled {message_id} as {moved.message_id}, due {_time(moved.due_at)} UTC")


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
