"""Writing to the outbox: schedule commands inside the caller's database transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from postdate._clock import to_epoch_ms
from postdate._command import Command, require_command
from postdate.delay._routing import When, due_time
from postdate.outbox.schema import outbox_table


def _values(
    command: Command,
    due: datetime,
    now: datetime,
    message_id: str | None,
    correlation_id: str | None,
) -> dict[str, Any]:
    require_command(command)
    return row_values(
        message_id or str(uuid.uuid4()),
        command.queue,
        command.command_type,
        command.model_dump_json(),
        due,
        now,
        correlation_id,
    )


def row_values(
    message_id: str,
    queue: str,
    command_type: str,
    body: str,
    due: datetime,
    now: datetime,
    correlation_id: str | None,
) -> dict[str, Any]:
    """The values of a new, unpublished outbox row."""
    return {
        "message_id": message_id,
        "queue": queue,
        "type": command_type,
        "body": body,
        "due_at": due,
        "due_ms": to_epoch_ms(due),
        "correlation_id": correlation_id,
        "created_at": now,
        "attempts": 0,
    }


async def schedule(
    session: AsyncSession,
    command: Command,
    delay: When | None = None,
    *,
    at: datetime | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """Write ``command`` to the outbox in ``session``'s transaction; returns its message id.

    Nothing is published here: the command leaves when the transaction commits and a
    relay picks it up; a rollback discards it with the rest of the change. ``delay`` and
    ``at`` mean what they mean for :meth:`Publisher.send`; the exact due time is kept and
    travels in the envelope, however late the relay publishes. Give a deterministic
    ``message_id`` to make it the handler's idempotency key.

    Raises:
        DelayError: negative or too long a delay, naive ``at``, both given (raised before
            anything is written).
        InvalidArgument: ``command`` is not an instance of a Command subclass.
        sqlalchemy.exc.IntegrityError: ``message_id`` is already in the outbox.
    """
    now = now or datetime.now(UTC)
    values = _values(command, due_time(now, delay, at), now, message_id, correlation_id)
    await session.execute(insert(outbox_table).values(**values))
    return str(values["message_id"])


async def schedule_many(
    session: AsyncSession,
    items: Iterable[tuple[Command, When]],
    *,
    correlation_id: str | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Write several commands to the outbox in one statement; returns their message ids.

    Each item is ``(command, delay or aware due datetime)``. Every item is checked before
    anything is written.

    Raises:
        DelayError: an item's delay cannot be scheduled (nothing written then).
    """
    now = now or datetime.now(UTC)
    rows = [
        _values(command, due_time(now, when), now, None, correlation_id) for command, when in items
    ]
    if rows:
        await session.execute(insert(outbox_table), rows)
    return [str(row["message_id"]) for row in rows]
