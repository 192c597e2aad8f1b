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

Sent rows keep their exact due time, so the schedule stays queryable: :func:`upcoming`
lists what is coming for one correlation id (e.g. an order), :func:`schedule_overview`
counts everything by due-time bucket. :func:`purge_sent` removes rows long past due.

Create the table with ``outbox_metadata.create_all(connection)`` (or copy
:data:`outbox_table` into your migrations).
"""

from postdate.outbox.queries import (
    DueBucket,
    get,
    pending_count,
    purge_sent,
    schedule_overview,
    upcoming,
)
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
    outbox_metadata,
    outbox_table,
)
from postdate.outbox.write import schedule, schedule_many

__all__ = [
    "LOCKING_DIALECTS",
    "TABLE_NAME",
    "BatchHook",
    "DueBucket",
    "OutboxRelay",
    "OutboxRow",
    "RelayHooks",
    "UTCDateTime",
    "envelope_for_row",
    "get",
    "outbox_metadata",
    "outbox_table",
    "pending_count",
    "purge_sent",
    "schedule",
    "schedule_many",
    "schedule_overview",
    "upcoming",
]
