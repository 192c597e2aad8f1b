"""A schedule you can see and change: cancel, reschedule, and each command's timeline.

The schedule lives in the database the outbox uses. :class:`ScheduleStore` cancels by
message id or for all that is pending for one entity (``correlation_id``), reschedules,
and answers what is coming, what happened, and counts per hour or day. Workers given the
store (``POSTDATE_SCHEDULE_URL`` or ``Worker(schedule=...)``) never hand a cancelled
command to its handler (they ack it as ``cancelled``) and record every outcome::

    store = ScheduleStore.from_url("sqlite+aiosqlite:///orders.db")
    await store.create_tables()
    result = await store.cancel(message_id)          # CancelStatus.CANCELLED or TOO_LATE
    for item in await store.upcoming(correlation_id="order-42"): ...
    print(await store.timeline(message_id))
"""

from postdate._extras import require

require("sqlalchemy", "postdate.schedule", extra="sql")

from postdate.schedule.cancels import CONFIRM_TIMEOUT_SECONDS, WATCHER_LIVE_SECONDS, cancel_in
from postdate.schedule.engine import make_engine
from postdate.schedule.records import (
    FINAL_OUTCOMES,
    CancelResult,
    CancelStatus,
    HistoryEntry,
    OutcomeCount,
    Scheduled,
    Timeline,
    Trimmed,
)
from postdate.schedule.store import ScheduleStore
from postdate.schedule.tables import cancel_table, history_table, watcher_table
from postdate.schedule.watch import STALE_AFTER_SECONDS, CancelWatch

__all__ = [
    "CONFIRM_TIMEOUT_SECONDS",
    "FINAL_OUTCOMES",
    "STALE_AFTER_SECONDS",
    "WATCHER_LIVE_SECONDS",
    "CancelResult",
    "CancelStatus",
    "CancelWatch",
    "HistoryEntry",
    "OutcomeCount",
    "ScheduleStore",
    "Scheduled",
    "Timeline",
    "Trimmed",
    "cancel_in",
    "cancel_table",
    "history_table",
    "make_engine",
    "watcher_table",
]
