"""Reschedule's copy of a command: written held in the old command's cancel, then
released, or cancelled before it was ever published when the old one was too late."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession

from postdate.outbox.schema import OutboxRow, hold_table, outbox_table
from postdate.outbox.write import row_values
from postdate.schedule.cancels import Sessions, cancel_in
from postdate.schedule.records import CancelResult, CancelStatus


@dataclass
class HeldCopy:
    """A reschedule's copy of a command, written held in the old one's cancel."""

    values: dict[str, object]
    hold_until: datetime
    written: bool = False

    @property
    def message_id(self) -> str:
        """The id the command travels under after the reschedule."""
        return str(self.values["message_id"])

    async def write(self, session: AsyncSession, tombstoned: list[str]) -> None:
        """Write the copy and its hold, unless the old command got no tombstone (it was
        handled or cancelled meanwhile: then there is nothing to copy)."""
        if not tombstoned:
            return
        await session.execute(insert(outbox_table).values(**self.values))
        hold = {"message_id": self.message_id, "expires_at": self.hold_until}
        await session.execute(insert(hold_table).values(**hold))
        self.written = True


def copy_values(row: OutboxRow, message_id: str, due: datetime, now: datetime) -> dict[str, object]:
    """The outbox row of ``row``'s command under ``message_id``, due at ``due``."""
    return row_values(message_id, row.queue, row.type, row.body, due, now, row.correlation_id)


async def settle_copy(sessions: Sessions, new_id: str, old_id: str, result: CancelResult) -> None:
    """Release the held copy of a reschedule, or cancel it when the old command was
    not cancelled in time (it never left the outbox, so it never runs)."""
    async with sessions() as session, session.begin():
        if result.status is not CancelStatus.CANCELLED:
            await cancel_in(session, [new_id], reason=f"reschedule of {old_id} failed")
        await session.execute(delete(hold_table).where(hold_table.c.message_id == new_id))
