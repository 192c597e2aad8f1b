"""The schedule as data: what is coming, what happened, counts per bucket, and trimming."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, and_, delete, exists, func, literal, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from postdate._clock import require_aware
from postdate._errors import InvalidArgument
from postdate.outbox.schema import not_cancelled, outbox_table
from postdate.schedule.filters import epoch_ms, row_filters
from postdate.schedule.records import (
    FINAL_OUTCOMES,
    HistoryEntry,
    OutcomeCount,
    Scheduled,
    Timeline,
    Trimmed,
)
from postdate.schedule.tables import cancel_table, history_table, watcher_table

Sessions = Callable[[], AsyncSession]
SCHEDULED = "scheduled"  # the "outcome" of commands still to come, in the overview


def _not_final() -> ColumnElement[bool]:
    """Outbox rows without a final outcome recorded."""
    return ~exists().where(
        history_table.c.message_id == outbox_table.c.message_id,
        history_table.c.outcome.in_(FINAL_OUTCOMES),
    )


async def upcoming(
    session: AsyncSession,
    *,
    correlation_id: str | None = None,
    command_type: str | None = None,
    queue: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    limit: int | None = 100,
) -> list[Scheduled]:
    """Commands in the outbox that are neither cancelled nor done, soonest due first
    (overdue ones too, unless ``after`` is given)."""
    table = outbox_table
    attempts = (
        select(func.count())
        .where(history_table.c.message_id == table.c.message_id)
        .scalar_subquery()
    )
    conditions = [
        not_cancelled(),
        _not_final(),
        *row_filters(
            table,
            table.c.due_ms,
            after=after,
            before=before,
            correlation_id=correlation_id,
            command_type=command_type,
            queue=queue,
        ),
    ]
    query = select(table, attempts.label("recorded")).where(and_(*conditions))
    query = query.order_by(table.c.due_ms, table.c.id).limit(limit)
    rows = await session.execute(query)
    return [
        Scheduled(
            message_id=row.message_id,
            type=row.type,
            queue=row.queue,
            correlation_id=row.correlation_id,
            due_at=row.due_at,
            scheduled_at=row.created_at,
            published_at=row.sent_at,
            attempts=int(row.recorded),
        )
        for row in rows
    ]


async def history(
    session: AsyncSession,
    *,
    message_id: str | None = None,
    correlation_id: str | None = None,
    command_type: str | None = None,
    outcome: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    limit: int | None = 100,
) -> list[HistoryEntry]:
    """Recorded outcomes, newest first, filtered as given."""
    table = history_table
    conditions = row_filters(
        table,
        table.c.at_ms,
        after=after,
        before=before,
        correlation_id=correlation_id,
        command_type=command_type,
    )
    if message_id is not None:
        conditions.append(table.c.message_id == message_id)
    if outcome is not None:
        conditions.append(table.c.outcome == outcome)
    query = select(table).where(*conditions).order_by(table.c.at_ms.desc(), table.c.id.desc())
    rows = await session.execute(query.limit(limit))
    return [_entry(row) for row in rows]


def _entry(row: Row[Any]) -> HistoryEntry:
    return HistoryEntry(
        message_id=row.message_id,
        type=row.type,
        queue=row.queue,
        correlation_id=row.correlation_id,
        attempt=row.attempt,
        outcome=row.outcome,
        detail=row.detail,
        at=row.at,
        worker=row.worker,
    )


async def known(session: AsyncSession, message_id: str) -> bool:
    """Whether anything is known of ``message_id``: an outbox row, a tombstone or an
    outcome (one query)."""
    found = select(
        exists().where(outbox_table.c.message_id == message_id)
        | exists().where(cancel_table.c.message_id == message_id)
        | exists().where(history_table.c.message_id == message_id)
    )
    return bool((await session.execute(found)).scalar())


async def cancel_reason(session: AsyncSession, message_id: str) -> str | None:
    """The reason ``message_id`` was cancelled with, or None when it was not cancelled."""
    found = select(cancel_table.c.reason).where(cancel_table.c.message_id == message_id)
    reason = (await session.execute(found)).scalar_one_or_none()
    return None if reason is None else str(reason)


async def timeline(session: AsyncSession, message_id: str) -> Timeline | None:
    """Everything known of ``message_id``, or None when nothing is."""
    scheduled = (
        await session.execute(select(outbox_table).where(outbox_table.c.message_id == message_id))
    ).first()
    cancel = (
        await session.execute(
            select(cancel_table.c.requested_at, cancel_table.c.reason).where(
                cancel_table.c.message_id == message_id
            )
        )
    ).first()
    entries = (
        await session.execute(
            select(history_table)
            .where(history_table.c.message_id == message_id)
            .order_by(history_table.c.at_ms, history_table.c.id)
        )
    ).all()
    if scheduled is None and cancel is None and not entries:
        return None
    outcomes = tuple(_entry(row) for row in entries)
    source = scheduled or (outcomes[0] if outcomes else None)
    return Timeline(
        message_id=message_id,
        type=source.type if source else "",
        correlation_id=source.correlation_id if source else None,
        due_at=scheduled.due_at if scheduled else None,
        scheduled_at=scheduled.created_at if scheduled else None,
        published_at=scheduled.sent_at if scheduled else None,
        cancelled_at=cancel.requested_at if cancel else None,
        cancel_reason=cancel.reason if cancel else "",
        outcomes=outcomes,
    )


async def overview(
    session: AsyncSession,
    bucket: timedelta,
    *,
    after: datetime | None = None,
    before: datetime | None = None,
    command_type: str | None = None,
) -> list[OutcomeCount]:
    """Per ``bucket`` (aligned to the Unix epoch: hours and days start on UTC boundaries)
    and command type: how many commands ended in each outcome (by when it was recorded),
    and how many still to come fall due (``"scheduled"``, by due time), oldest first.

    Raises:
        InvalidArgument: ``bucket`` is not a positive whole number of milliseconds.
        DelayError: ``after`` or ``before`` is naive.
    """
    size = int(bucket.total_seconds() * 1000)
    if size <= 0 or size != bucket.total_seconds() * 1000:
        raise InvalidArgument(f"bucket {bucket} must be a positive whole number of milliseconds")
    counts = await _outcome_counts(session, size, after, before, command_type)
    counts += await _scheduled_counts(session, size, after, before, command_type)
    return sorted(counts, key=lambda count: (count.start, count.type, count.outcome))


async def _outcome_counts(
    session: AsyncSession,
    size: int,
    after: datetime | None,
    before: datetime | None,
    command_type: str | None,
) -> list[OutcomeCount]:
    table = history_table
    index = (table.c.at_ms // literal(size, BigInteger)).label("bucket")
    conditions = row_filters(
        table, table.c.at_ms, after=after, before=before, command_type=command_type
    )
    query = (
        select(index, table.c.type, table.c.outcome, func.count())
        .where(*conditions)
        .group_by(index, table.c.type, table.c.outcome)
    )
    return [
        OutcomeCount(_bucket_start(number, size), kind, outcome, int(count))
        for number, kind, outcome, count in await session.execute(query)
    ]


async def _scheduled_counts(
    session: AsyncSession,
    size: int,
    after: datetime | None,
    before: datetime | None,
    command_type: str | None,
) -> list[OutcomeCount]:
    table = outbox_table
    index = (table.c.due_ms // literal(size, BigInteger)).label("bucket")
    conditions = [not_cancelled(), _not_final()]
    conditions += row_filters(
        table, table.c.due_ms, after=after, before=before, command_type=command_type
    )
    query = (
        select(index, table.c.type, func.count())
        .where(and_(*conditions))
        .group_by(index, table.c.type)
    )
    return [
        OutcomeCount(_bucket_start(number, size), kind, SCHEDULED, int(count))
        for number, kind, count in await session.execute(query)
    ]


def _bucket_start(number: int, size: int) -> datetime:
    return datetime.fromtimestamp(int(number) * size / 1000, tz=UTC)


async def trim(session: AsyncSession, before: datetime) -> Trimmed:
    """Delete what ended before ``before``: history rows recorded before it, outbox rows
    due before it that were relayed and are done, or cancelled, and tombstones older than it
    whose command is done or no longer in the outbox, and the registrations of workers
    silent since before it. Nothing still to come is deleted.

    Raises:
        DelayError: ``before`` is naive.
    """
    cutoff = epoch_ms(before, "before")
    done = exists().where(
        history_table.c.message_id == outbox_table.c.message_id,
        history_table.c.outcome.in_(FINAL_OUTCOMES),
    )
    outbox_rows = await session.execute(
        delete(outbox_table).where(
            outbox_table.c.due_ms < cutoff,
            (outbox_table.c.sent_at.is_not(None) & done) | ~not_cancelled(),
        )
    )
    in_outbox = exists().where(outbox_table.c.message_id == cancel_table.c.message_id)
    cancels = await session.execute(
        delete(cancel_table).where(
            cancel_table.c.requested_at < require_aware(before, "before="), ~in_outbox
        )
    )
    # Workers that stopped without unregistering (killed): long ignored by cancels.
    await session.execute(delete(watcher_table).where(watcher_table.c.beat_at < before))
    history_rows = await session.execute(
        delete(history_table).where(history_table.c.at_ms < cutoff)
    )
    return Trimmed(_count(history_rows), _count(outbox_rows), _count(cancels))


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
