"""The schedule as data: what is pending, what is coming, how much falls due when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Table, and_, case, delete, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from postdate._clock import require_aware, to_epoch_ms
from postdate._errors import InvalidArgument
from postdate.outbox.schema import OutboxRow, not_cancelled, outbox_table


async def pending_count(session: AsyncSession) -> int:
    """Rows not yet published (committed but not confirmed by the broker), cancelled
    ones left out (the relay skips them)."""
    result = await session.execute(
        select(func.count())
        .select_from(outbox_table)
        .where(outbox_table.c.sent_at.is_(None), not_cancelled())
    )
    return int(result.scalar_one())


async def get(session: AsyncSession, message_id: str) -> OutboxRow | None:
    """The outbox row of ``message_id``, or None."""
    result = await session.execute(
        select(outbox_table).where(outbox_table.c.message_id == message_id)
    )
    row = result.first()
    return None if row is None else OutboxRow.from_row(row)


async def upcoming(
    session: AsyncSession,
    *,
    correlation_id: str | None = None,
    queue: str | None = None,
    command_type: str | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    limit: int = 100,
) -> list[OutboxRow]:
    """Scheduled commands due from ``after`` (default now) until ``before``, soonest first.

    Relayed and pending rows alike: a row keeps its due time after it was published.
    Filter by ``correlation_id`` (e.g. an order id), ``queue`` or ``command_type``.

    Raises:
        DelayError: ``after`` or ``before`` is naive.
    """
    table = outbox_table
    conditions = _due_window(after, before, queue, command_type)
    if correlation_id is not None:
        conditions.append(table.c.correlation_id == correlation_id)
    result = await session.execute(
        select(table).where(and_(*conditions)).order_by(table.c.due_ms, table.c.id).limit(limit)
    )
    return [OutboxRow.from_row(row) for row in result]


def _due_window(
    after: datetime | None, before: datetime | None, queue: str | None, command_type: str | None
) -> list[ColumnElement[bool]]:
    """Row filters shared by the schedule queries: due from ``after`` (default now) until
    ``before``, optionally of one queue or command type."""
    return row_filters(
        outbox_table,
        outbox_table.c.due_ms,
        after=after or datetime.now(UTC),
        before=before,
        queue=queue,
        command_type=command_type,
    )


def row_filters(
    table: Table,
    moment_ms: ColumnElement[int],
    *,
    after: datetime | None = None,
    before: datetime | None = None,
    correlation_id: str | None = None,
    command_type: str | None = None,
    queue: str | None = None,
) -> list[ColumnElement[bool]]:
    """Conditions on ``table`` (the outbox, or one with the same ``correlation_id``,
    ``type`` and ``queue`` columns): ``moment_ms`` in ``[after, before)``, and the given
    values; None means no condition.

    Raises:
        DelayError: ``after`` or ``before`` is naive.
    """
    conditions: list[ColumnElement[bool]] = []
    if after is not None:
        conditions.append(moment_ms >= epoch_ms(after, "after"))
    if before is not None:
        conditions.append(moment_ms < epoch_ms(before, "before"))
    for column, value in (
        ("correlation_id", correlation_id),
        ("type", command_type),
        ("queue", queue),
    ):
        if value is not None:
            conditions.append(table.c[column] == value)
    return conditions


@dataclass(frozen=True)
class DueBucket:
    """Commands due in ``[start, end)``; ``pending`` of them not yet relayed."""

    start: datetime
    end: datetime
    count: int
    pending: int


async def schedule_overview(
    session: AsyncSession,
    bucket: timedelta,
    *,
    after: datetime | None = None,
    before: datetime | None = None,
    queue: str | None = None,
    command_type: str | None = None,
) -> list[DueBucket]:
    """How many commands fall due per ``bucket`` (aligned to the Unix epoch, so hours and
    days start on UTC boundaries), from ``after`` (default now) until ``before``.

    Empty buckets are left out.

    Raises:
        InvalidArgument: ``bucket`` is not a positive whole number of milliseconds.
        DelayError: ``after`` or ``before`` is naive.
    """
    size = int(bucket.total_seconds() * 1000)
    if size <= 0 or size != bucket.total_seconds() * 1000:
        raise InvalidArgument(f"bucket {bucket} must be a positive whole number of milliseconds")
    table = outbox_table
    conditions = _due_window(after, before, queue, command_type)
    index = (table.c.due_ms // literal(size, BigInteger)).label("bucket")
    pending = func.sum(case((table.c.sent_at.is_(None), 1), else_=0))
    result = await session.execute(
        select(index, func.count(), pending)
        .where(and_(*conditions))
        .group_by(index)
        .order_by(index)
    )
    buckets = []
    for number, count, waiting in result:
        begin = datetime.fromtimestamp(int(number) * size / 1000, tz=UTC)
        buckets.append(DueBucket(begin, begin + bucket, int(count), int(waiting or 0)))
    return buckets


async def purge_sent(session: AsyncSession, due_before: datetime) -> int:
    """Delete relayed rows that fell due before ``due_before``; returns how many.

    Pending rows are never deleted, whatever their due time.

    Raises:
        DelayError: ``due_before`` is naive.
    """
    result = await session.execute(
        delete(outbox_table).where(
            outbox_table.c.sent_at.is_not(None),
            outbox_table.c.due_ms < epoch_ms(due_before, "due_before"),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def epoch_ms(moment: datetime, name: str) -> int:
    """``moment`` in epoch milliseconds, rounded up (never before it).

    Raises:
        DelayError: ``moment`` is naive (the message names ``name=``).
    """
    return to_epoch_ms(require_aware(moment, f"{name}="))
