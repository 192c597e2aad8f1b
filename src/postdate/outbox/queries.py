"""What the relay needs to know of the outbox: its pending rows, and one row by id.

Every question about what is coming, what happened and what to trim is the schedule's
(:class:`postdate.schedule.ScheduleStore`)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

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
