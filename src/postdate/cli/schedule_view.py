"""How `postdate schedule` shows what it found: tables for people, JSON for scripts, times
in UTC."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import typer

from postdate.cli.common import overdue_note, print_json
from postdate.schedule import HistoryEntry, OutcomeCount, Scheduled, Timeline

OUTCOME_ORDER = ("scheduled", "handled", "retried", "skipped", "poisoned", "cancelled")


class Bucket(StrEnum):
    """The width of one row of the overview."""

    HOUR = "hour"
    DAY = "day"


BUCKETS = {Bucket.HOUR: timedelta(hours=1), Bucket.DAY: timedelta(days=1)}


def utc_time(moment: datetime | None) -> str:
    """``moment`` in UTC to the second, ``-`` for None."""
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(moment: datetime | None) -> str | None:
    """``moment`` in UTC as ISO 8601 (None stays None)."""
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


def _scheduled_json(row: Scheduled, now: datetime) -> dict[str, Any]:
    return {
        "message_id": row.message_id,
        "type": row.type,
        "queue": row.queue,
        "correlation_id": row.correlation_id,
        "due_at": iso(row.due_at),
        "scheduled_at": iso(row.scheduled_at),
        "published_at": iso(row.published_at),
        "attempts": row.attempts,
        "overdue": row.overdue_at(now),
    }


def _history_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "outcome": entry.outcome,
        "type": entry.type,
        "message_id": entry.message_id,
        "queue": entry.queue,
        "correlation_id": entry.correlation_id,
        "attempt": entry.attempt,
        "detail": entry.detail,
        "worker": entry.worker,
    }


def show_upcoming(rows: Sequence[Scheduled], limit: int, as_json: bool) -> None:
    """`upcoming`'s commands still to come, at most ``limit`` of them; those overdue (due,
    and not published: no relay runs) are marked and counted."""
    now = datetime.now(UTC)
    overdue = sum(row.overdue_at(now) for row in rows)
    if as_json:
        listed = [_scheduled_json(row, now) for row in rows]
        print_json({"upcoming": listed, "limit": limit, "overdue": overdue})
        return
    print_table(
        ["due (UTC)", "type", "message id", "correlation id", "published", "overdue", "attempts"],
        [
            [
                utc_time(row.due_at),
                row.type,
                row.message_id,
                row.correlation_id or "-",
                "yes" if row.published_at else "no",
                "yes" if row.overdue_at(now) else "no",
                str(row.attempts),
            ]
            for row in rows
        ],
        right=1,
    )
    _footer(len(rows), limit, "upcoming")
    if overdue:
        typer.secho(f"{overdue_note(overdue)}", fg=typer.colors.YELLOW)


def show_history(entries: Sequence[HistoryEntry], limit: int, as_json: bool) -> None:
    """`history`'s recorded outcomes, at most ``limit`` of them."""
    if as_json:
        print_json({"history": [_history_json(entry) for entry in entries], "limit": limit})
        return
    print_table(
        ["at (UTC)", "outcome", "type", "message id", "attempt", "detail", "worker"],
        [
            [
                utc_time(entry.at),
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


def show_overview(counts: Sequence[OutcomeCount], bucket: Bucket, as_json: bool) -> None:
    """`overview`'s counts: one row per ``bucket`` and command type, one column per
    outcome."""
    rows = _pivot(counts)
    if as_json:
        print_json(
            {
                "bucket": bucket.value,
                "rows": [
                    {"start": iso(start), "type": kind, "counts": by_outcome}
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


def show_timeline(found: Timeline, as_json: bool) -> None:
    """`timeline`'s one command: its times, its cancel and every outcome."""
    if as_json:
        print_json(_timeline_json(found))
        return
    cancelled = "-"
    if found.cancelled_at is not None:
        cancelled = utc_time(found.cancelled_at) + (
            f" ({found.cancel_reason})" if found.cancel_reason else ""
        )
    for key, value in (
        ("message id", found.message_id),
        ("type", found.type or "-"),
        ("correlation id", found.correlation_id or "-"),
        ("scheduled", utc_time(found.scheduled_at)),
        ("due", utc_time(found.due_at)),
        ("published", utc_time(found.published_at)),
        ("cancelled", cancelled),
        ("final", found.final.outcome if found.final else "-"),
    ):
        typer.echo(f"{key + ':':<16}{value}")
    if found.outcomes:
        typer.echo("outcomes (UTC):")
        print_table(
            ["  at", "outcome", "attempt", "worker", "detail"],
            [
                [
                    "  " + utc_time(e.at),
                    e.outcome,
                    str(e.attempt),
                    e.worker,
                    _short(e.detail) or "-",
                ]
                for e in found.outcomes
            ],
        )


def _timeline_json(found: Timeline) -> dict[str, Any]:
    return {
        "message_id": found.message_id,
        "type": found.type,
        "correlation_id": found.correlation_id,
        "scheduled_at": iso(found.scheduled_at),
        "due_at": iso(found.due_at),
        "published_at": iso(found.published_at),
        "cancelled_at": iso(found.cancelled_at),
        "cancel_reason": found.cancel_reason,
        "final": found.final.outcome if found.final else None,
        "outcomes": [_history_json(entry) for entry in found.outcomes],
    }
