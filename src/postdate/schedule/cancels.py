"""Cancel: a durable tombstone per message id, confirmed by every live worker.

The broker cannot take a message out of the middle of a queue, so a cancelled command
still arrives; a worker with a schedule store checks its in-memory copy of the tombstones
(:mod:`postdate.schedule.watch`) before the handler, and acks it as ``cancelled``.

The protocol that makes the answer exact:

1. One transaction writes the tombstones of the commands that have no final outcome yet
   (those that have one are too late: nothing is written for them).
2. Every worker reads new tombstones every fraction of a second, and in the same
   transaction marks those of commands it had already started (``too_late_by``) and
   records the id of the last tombstone it has seen. A worker whose last read is older
   than :data:`~postdate.schedule.watch.STALE_AFTER_SECONDS` starts no handler.
3. The cancel waits until every live worker has seen its tombstones, then reads the marks:
   an unmarked command is never handled, a marked one is reported too late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from postdate._clock import to_epoch_ms
from postdate.outbox.schema import outbox_table
from postdate.schedule.history import insert_history
from postdate.schedule.records import FINAL_OUTCOMES, CancelResult, CancelStatus
from postdate.schedule.tables import cancel_table, history_table, watcher_table

Sessions = Callable[[], AsyncSession]
# Runs in the tombstones' transaction with the ids that got a tombstone there.
WithTombstones = Callable[[AsyncSession, list[str]], Awaitable[None]]
UNPUBLISHED_WORKER = "(not published)"  # the history row of a cancel before the relay

# A worker that has not said it is alive for this long does not hold up a cancel (it
# also starts no handler before it has read the tombstones again).
WATCHER_LIVE_SECONDS = 10.0
CONFIRM_TIMEOUT_SECONDS = 15.0
_ADVISORY_LOCK_KEY = 0x706F737464617465  # "postdate"
_CHUNK = 500  # ids per IN (...) list: well under every backend's parameter limit


async def cancel_in(session: AsyncSession, message_ids: Sequence[str], reason: str = "") -> int:
    """Write tombstones for ``message_ids`` in the caller's transaction (e.g. with the
    order's pickup): they commit or roll back with it. Returns how many were new.

    It does not wait for the workers, so it cannot say whether a command was already
    running: use :meth:`ScheduleStore.cancel` for that answer. A command cancelled here
    is never handed to its handler by a worker that starts it after the commit plus
    a fraction of a second.
    """
    ids = list(dict.fromkeys(message_ids))
    await serialize_cancels(session)
    already = await _tombstoned(session, ids)
    fresh = [mid for mid in ids if mid not in already]
    await _write_tombstones(session, fresh, reason)
    return len(fresh)


async def _write_tombstones(session: AsyncSession, ids: Sequence[str], reason: str) -> None:
    """Tombstones for ``ids``, and a ``cancelled`` outcome for those the relay has not
    published (no worker will ever see them to record one)."""
    now = datetime.now(UTC)
    for chunk in chunks(ids):
        await session.execute(
            insert(cancel_table),
            [{"message_id": mid, "requested_at": now, "reason": reason} for mid in chunk],
        )
    await _record_unpublished(session, ids, reason, now)


async def _record_unpublished(
    session: AsyncSession, ids: Sequence[str], reason: str, now: datetime
) -> None:
    table = outbox_table
    for chunk in chunks(ids):
        found = await session.execute(
            select(table.c.message_id, table.c.queue, table.c.type, table.c.correlation_id).where(
                table.c.message_id.in_(chunk), table.c.sent_at.is_(None)
            )
        )
        at_ms, who = to_epoch_ms(now), UNPUBLISHED_WORKER
        rows = [
            (mid, queue, kind, correlation, 0, "cancelled", reason, now, at_ms, who)
            for mid, queue, kind, correlation in found
        ]
        if rows:
            await insert_history(session, rows)


async def cancel_ids(
    sessions: Sessions,
    message_ids: Sequence[str],
    reason: str,
    confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
    with_tombstones: WithTombstones | None = None,
) -> list[CancelResult]:
    """Cancel ``message_ids`` (in that order in the result); see the module docstring.
    ``with_tombstones`` runs in the tombstones' transaction, given the ids that got one."""
    ids = list(dict.fromkeys(message_ids))
    async with sessions() as session, session.begin():
        await serialize_cancels(session)
        finals = await _final_outcomes(session, ids)
        already = await _tombstoned(session, ids)
        fresh = [mid for mid in ids if mid not in finals and mid not in already]
        await _write_tombstones(session, fresh, reason)
        if with_tombstones is not None:
            await with_tombstones(session, fresh)
        last_id = await _last_cancel_id(session) if fresh else 0
    behind = await wait_for_watchers(sessions, last_id, confirm_timeout) if fresh else ()
    late, finals_now = await _late_marks(sessions, fresh)
    finals_now.update(finals)
    return [_result(mid, finals_now, late, already, behind) for mid in ids]


def _result(
    mid: str,
    finals: dict[str, str],
    late: dict[str, str],
    already: set[str],
    behind: tuple[str, ...],
) -> CancelResult:
    if finals.get(mid) == "cancelled" or mid in already:
        return CancelResult(mid, CancelStatus.ALREADY_CANCELLED)
    if mid in finals:
        return CancelResult(mid, CancelStatus.TOO_LATE, f"already {finals[mid]}")
    if mid in late:
        return CancelResult(mid, CancelStatus.TOO_LATE, f"was running on {late[mid]}")
    return CancelResult(mid, CancelStatus.CANCELLED, unconfirmed=behind)


async def wait_for_watchers(
    sessions: Sessions, cancel_id: int, wait: float, live_seconds: float = WATCHER_LIVE_SECONDS
) -> tuple[str, ...]:
    """Wait until every live worker has seen tombstone ``cancel_id``; the names of those
    that had not after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        behind = await _watchers_behind(sessions, cancel_id, live_seconds)
        if not behind or time.monotonic() >= deadline:
            return behind
        await asyncio.sleep(0.05)


async def _watchers_behind(
    sessions: Sessions, cancel_id: int, live_seconds: float
) -> tuple[str, ...]:
    since = datetime.now(UTC) - timedelta(seconds=live_seconds)
    async with sessions() as session:
        rows = await session.execute(
            select(watcher_table.c.name).where(
                watcher_table.c.beat_at >= since, watcher_table.c.seen_cancel_id < cancel_id
            )
        )
        return tuple(sorted(name for (name,) in rows))


async def _late_marks(
    sessions: Sessions, ids: Sequence[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Of ``ids``: the worker that marked each too late, and each one's final outcome."""
    late: dict[str, str] = {}
    async with sessions() as session:
        for chunk in chunks(ids):
            rows = await session.execute(
                select(cancel_table.c.message_id, cancel_table.c.too_late_by).where(
                    cancel_table.c.message_id.in_(chunk), cancel_table.c.too_late_by.is_not(None)
                )
            )
            late.update({mid: str(worker) for mid, worker in rows})
        finals = await _final_outcomes(session, ids, exclude_cancelled=True)
    return late, finals


async def _final_outcomes(
    session: AsyncSession, ids: Sequence[str], *, exclude_cancelled: bool = False
) -> dict[str, str]:
    """The final outcome recorded for each of ``ids`` that has one."""
    outcomes = set(FINAL_OUTCOMES) - ({"cancelled"} if exclude_cancelled else set())
    found: dict[str, str] = {}
    for chunk in chunks(ids):
        rows = await session.execute(
            select(history_table.c.message_id, history_table.c.outcome).where(
                history_table.c.message_id.in_(chunk), history_table.c.outcome.in_(outcomes)
            )
        )
        found.update({mid: str(outcome) for mid, outcome in rows})
    return found


async def _tombstoned(session: AsyncSession, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in chunks(ids):
        rows = await session.execute(
            select(cancel_table.c.message_id).where(cancel_table.c.message_id.in_(chunk))
        )
        found.update(mid for (mid,) in rows)
    return found


async def serialize_cancels(session: AsyncSession) -> None:
    """Make tombstone transactions commit one after another, in the order of their ids.

    Workers read ``id > last seen``: if a later id could commit first, a worker could pass
    an earlier one that commits after. SQLite transactions are serialised already (the
    engine begins them IMMEDIATE); on PostgreSQL a transaction-scoped advisory lock does it.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))


async def _last_cancel_id(session: AsyncSession) -> int:
    result = await session.execute(select(func.max(cancel_table.c.id)))
    return int(result.scalar_one() or 0)


def chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    """``ids`` in lists short enough for one ``IN (...)`` on every backend."""
    return [ids[start : start + _CHUNK] for start in range(0, len(ids), _CHUNK)]
