"""The worker's side of the schedule: the tombstones in memory, and outcomes written behind.

Checking a delivery against the cancels is a set lookup: no database round trip per
message. Every :data:`REFRESH_SECONDS` one transaction reads the tombstones written since
the last read, writes the outcomes recorded since the last write (the timeline), marks
tombstones of commands this worker had already started (too late), and records how far
it has read (see :mod:`postdate.schedule.cancels` for why that makes a cancel exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from postdate._clock import to_epoch_ms
from postdate._errors import ConfigError
from postdate._outcomes import Outcome
from postdate.observe._logs import get_logger
from postdate.outbox.schema import cancel_ids_reusable
from postdate.schedule.cancels import Sessions, chunks
from postdate.schedule.history import HISTORY_COLUMNS, Row, insert_history
from postdate.schedule.tables import cancel_table, history_table, watcher_table

log = get_logger(__name__)

REFRESH_SECONDS = 0.2
BEAT_SECONDS = 1.0
# No handler starts while the last good read of the tombstones is older than this (the
# deliveries wait, unacked): below cancels.WATCHER_LIVE_SECONDS, so a worker a cancel no
# longer waits for cannot start what it cancelled.
STALE_AFTER_SECONDS = 5.0
RECORDED = frozenset(
    {Outcome.HANDLED, Outcome.SKIPPED, Outcome.RETRIED, Outcome.POISONED, Outcome.CANCELLED}
)
MAX_DETAIL_CHARS = 1000


class CancelWatch:
    """One worker's view of the tombstones and its writer of outcomes.

    :meth:`start` registers the worker and reads every tombstone; :meth:`is_cancelled`
    then answers from memory, kept fresh by a background task until :meth:`stop`.
    """

    def __init__(self, sessions: Sessions, worker: str) -> None:
        self.sessions = sessions
        self.name = f"{worker}/{uuid.uuid4().hex[:8]}"
        self.worker = worker
        self._cancelled: set[str] = set()
        self._seen = 0
        self._started: dict[str, int] = {}  # started, their outcome not yet written
        self._outcomes: list[tuple[str, Row | None]] = []
        self._fresh_at = 0.0
        self._beat_at = 0.0
        self._fresh = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._refreshing = False  # the background task is in refresh(), not asleep
        self.failures = 0

    @property
    def cancelled_count(self) -> int:
        """Tombstones held in memory."""
        return len(self._cancelled)

    async def start(self) -> None:
        """Register this worker and read every tombstone.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or lacks the
                tables (``ScheduleStore.create_tables``).
            ConfigError: the SQLite tombstone table predates AUTOINCREMENT ids, so a
                cancel after a trim could go unseen (``postdate schedule init`` upgrades it).
        """
        async with self.sessions() as session, session.begin():
            connection = await session.connection()
            if await connection.run_sync(cancel_ids_reusable):
                raise ConfigError(
                    f"{cancel_table.name} in the schedule database reuses ids after a trim, "
                    "so cancels could go unseen: run `postdate schedule init` (or "
                    "ScheduleStore.create_tables()) once to upgrade it in place"
                )
            now = datetime.now(UTC)
            await session.execute(
                insert(watcher_table).values(name=self.name, seen_cancel_id=0, beat_at=now)
            )
        await self.refresh()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Write what is left and unregister (a cancel then no longer waits for it).

        A refresh in flight is waited for, never cancelled: cancelled after its commit it
        would queue its outcomes again (written twice), and cancelled within a statement
        it can leave its connection holding SQLite's write lock, so that the last write
        fails ("database is locked") and its outcomes are lost.
        """
        if self._task is not None:
            self._stopping = True
            if not self._refreshing:
                self._task.cancel()  # asleep between rounds: nothing in flight
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.refresh()
            async with self.sessions() as session, session.begin():
                await session.execute(
                    delete(watcher_table).where(watcher_table.c.name == self.name)
                )
        except Exception as exc:
            log.error("schedule.stop_failed", error=repr(exc), unwritten=len(self._outcomes))

    def is_cancelled(self, message_id: str) -> bool:
        """Whether ``message_id`` was cancelled (as of the last read)."""
        return message_id in self._cancelled

    @property
    def stale(self) -> bool:
        """Whether the last read of the tombstones is too old to start a handler on."""
        return time.monotonic() - self._fresh_at > STALE_AFTER_SECONDS

    async def wait_fresh(self) -> None:
        """Return once the last read of the tombstones is recent enough to start a handler."""
        while self.stale:
            self._fresh.clear()
            await self._fresh.wait()

    def started(self, message_id: str) -> None:
        """Note that ``message_id`` goes to its handler now (call right after the check)."""
        started = self._started
        started[message_id] = started.get(message_id, 0) + 1

    def record(self, outcome: Outcome, line: dict[str, object], correlation_id: str | None) -> None:
        """Queue the outcome of one delivery for the next write (``line`` as logged)."""
        message_id = str(line.get("message_id") or "")
        row = None
        if outcome in RECORDED and message_id:
            reason, error = line.get("reason"), line.get("error")
            detail = f"{reason} {error}" if reason and error else str(reason or error or "")
            now = datetime.now(UTC)
            row = (
                message_id,
                line["queue"],
                line["type"],
                correlation_id,
                line["attempt"],
                outcome.value,
                detail[:MAX_DETAIL_CHARS],
                now,
                to_epoch_ms(now),
                self.worker,
            )
        self._outcomes.append((message_id, row))

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(REFRESH_SECONDS)
            self._refreshing = True
            try:
                await self.refresh()
            except Exception as exc:  # keep trying; handlers wait once it is stale
                self.failures += 1
                if self.failures == 1:  # once per outage, not five times a second
                    log.warning("schedule.refresh_failed", error=repr(exc))
                continue
            finally:
                self._refreshing = False
            if self.failures:
                log.info("schedule.refresh_recovered", failures=self.failures)
                self.failures = 0

    async def refresh(self) -> None:
        """One round: read new tombstones, write outcomes and late marks, say how far read.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed (the outcomes stay queued).
        """
        began = time.monotonic()
        outcomes, self._outcomes = self._outcomes, []
        try:
            async with self.sessions() as session, session.begin():
                seen = await self._write_round(session, outcomes)
        except BaseException:
            self._outcomes[:0] = outcomes
            raise
        started = self._started
        for message_id, _ in outcomes:
            count = started.get(message_id)
            if count is not None:
                if count > 1:
                    started[message_id] = count - 1
                else:
                    del started[message_id]
        self._seen = seen
        self._fresh_at = began
        self._fresh.set()

    async def _write_round(
        self, session: AsyncSession, outcomes: list[tuple[str, Row | None]]
    ) -> int:
        """Write one round in ``session``'s transaction; the last tombstone id read."""
        rows = await session.execute(
            select(cancel_table.c.id, cancel_table.c.message_id)
            .where(cancel_table.c.id > self._seen)
            .order_by(cancel_table.c.id)
        )
        new = rows.all()
        # The cache takes them before anything else runs: a delivery checked after this
        # line sees them; one started before it is in self._started and marked late.
        self._cancelled.update(message_id for _, message_id in new)
        late = [cancel_id for cancel_id, message_id in new if message_id in self._started]
        history = await _drop_recorded_cancels(
            session, [row for _, row in outcomes if row is not None]
        )
        if history:
            await insert_history(session, history)
        if late:
            await session.execute(
                update(cancel_table)
                .where(cancel_table.c.id.in_(late))
                .values(too_late_by=self.name)
            )
        seen = int(new[-1][0]) if new else self._seen
        if seen != self._seen or time.monotonic() - self._beat_at >= BEAT_SECONDS:
            await self._beat(session, seen)
        return seen

    async def _beat(self, session: AsyncSession, seen: int) -> None:
        """Say this worker is alive and has read up to tombstone ``seen``."""
        values = {"seen_cancel_id": seen, "beat_at": datetime.now(UTC)}
        result = await session.execute(
            update(watcher_table).where(watcher_table.c.name == self.name).values(**values)
        )
        if not getattr(result, "rowcount", 1):  # its row was removed (e.g. trimmed): back
            await session.execute(insert(watcher_table).values(name=self.name, **values))
        self._beat_at = time.monotonic()


_OUTCOME = HISTORY_COLUMNS.index("outcome")


async def _drop_recorded_cancels(session: AsyncSession, rows: list[Row]) -> list[Row]:
    """``rows`` less the ``cancelled`` outcomes already recorded: a command cancelled
    before the relay published it has its row from the cancel, and reaches a worker
    only when the relay had read it just before."""
    ids = [row[0] for row in rows if row[_OUTCOME] == Outcome.CANCELLED.value]
    recorded: set[str] = set()
    for chunk in chunks(ids):
        found = await session.execute(
            select(history_table.c.message_id).where(
                history_table.c.message_id.in_(chunk),
                history_table.c.outcome == Outcome.CANCELLED.value,
            )
        )
        recorded.update(message_id for (message_id,) in found)
    if not recorded:
        return rows
    return [row for row in rows if not (row[_OUTCOME] == "cancelled" and row[0] in recorded)]
