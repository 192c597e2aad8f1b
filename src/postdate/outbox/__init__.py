"""A transactional outbox: schedule commands in the caller's database transaction.

A service that changes its data and schedules a command must not lose the command when
it crashes between its ``COMMIT`` and the publish, nor publish a command for a change that
rolled back. :func:`schedule` therefore writes the command as a row of the
``postdate_outbox`` table inside the caller's SQLAlchemy (async) session: it commits or
rolls back with the change. An :class:`OutboxRelay` then publishes pending rows through
the delay ladder with broker confirms and marks them sent::

    async with session.begin():
        order.status = "reserved"
        await outbox.schedule(session, ExpireReservation(order_id=order.id),
                              delay=timedelta(days=7), correlation_id=str(order.id))

    relay = OutboxRelay(sessions, publisher)
    await relay.run(stop_event)

A crash anywhere leaves the row pending (published again later: a duplicate at worst,
never a loss), so no batch job ever has to repair anything. Several relays may run on
databases with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL, MySQL 8, Oracle): each
locks its own batch until it marked it sent. Elsewhere (SQLite) run exactly one relay.

Sent rows keep their exact due time. What is coming, what happened, counts per hour and
trimming are the schedule's questions: :class:`postdate.schedule.ScheduleStore`.

Create the tables with ``await connection.run_sync(create_tables)`` (or copy
:data:`outbox_metadata`'s tables into your migrations). ``postdate relay`` runs a relay
as a process.
"""

from postdate._extras import require

require("sqlalchemy", "postdate.outbox", extra="sql")

from postdate.outbox.queries import get, pending_count
from postdate.outbox.relay import (
    LOCKING_DIALECTS,
    BatchHook,
    OutboxRelay,
    RelayHooks,
    envelope_for_row,
)
from postdate.outbox.schema import (
    TABLE_NAME,
    OutboxRow,
    UTCDateTime,
    create_tables,
    outbox_metadata,
    outbox_table,
)
from postdate.outbox.write import schedule, schedule_many

__all__ = [
    "LOCKING_DIALECTS",
    "TABLE_NAME",
    "BatchHook",
    "OutboxRelay",
    "OutboxRow",
    "RelayHooks",
    "UTCDateTime",
    "create_tables",
    "envelope_for_row",
    "get",
    "outbox_metadata",
    "outbox_table",
    "pending_count",
    "schedule",
    "schedule_many",
]
