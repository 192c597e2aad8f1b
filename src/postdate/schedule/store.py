"""The schedule store: cancel, reschedule and the timeline, on the outbox's database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from postdate._clock import require_aware
from postdate._errors import CancelTooLate, CommandCancelled, InvalidArgument, UnknownCommand
from postdate.delay._routing import When, due_time
from postdate.outbox.queries import get
from postdate.outbox.schema import create_tables
from postdate.schedule import views
from postdate.schedule.cancels import CONFIRM_TIMEOUT_SECONDS, cancel_ids
from postdate.schedule.engine import make_engine
from postdate.schedule.records import (
    CancelResult,
    CancelStatus,
    HistoryEntry,
    OutcomeCount,
    Scheduled,
    Timeline,
    Trimmed,
)
from postdate.schedule.reschedule import HeldCopy, copy_values, settle_copy
from postdate.schedule.watch import CancelWatch

CANCEL_CHUNK = 1000  # ids per cancel transaction (each waits for the workers once)
# A reschedule's copy is held for the cancel's wait plus this; then a relay publishes it
# even if the rescheduling process died before releasing it.
HOLD_MARGIN_SECONDS = 30.0


class ScheduleStore:
    """The schedule in the database the outbox uses (SQLite or PostgreSQL).

    ``sessions`` makes a new :class:`AsyncSession` per call (an ``async_sessionmaker``);
    :meth:`from_url` builds one. A worker given the same store (``Worker(schedule=...)``
    or ``POSTDATE_SCHEDULE_URL``) never hands a cancelled command to its handler, and
    records every command's outcome for :meth:`history` and :meth:`timeline`.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
    ) -> None:
        self.sessions = sessions
        self.confirm_timeout = confirm_timeout
        self._engine: AsyncEngine | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: float) -> ScheduleStore:
        """A store on a new engine for ``url``, closed by :meth:`close`.

        Raises:
            sqlalchemy.exc.ArgumentError: ``url`` is not a database URL SQLAlchemy knows.
        """
        engine = make_engine(url)
        store = cls(async_sessionmaker(engine, expire_on_commit=False), **kwargs)
        store._engine = engine
        return store

    async def create_tables(self) -> None:
        """Create the outbox and schedule tables that are missing, and upgrade a SQLite
        tombstone table whose ids could come back after a trim (rebuilt in place, rows
        kept); no other table is altered."""
        async with self.sessions() as session, session.begin():
            connection = await session.connection()
            await connection.run_sync(create_tables)

    async def close(self) -> None:
        """Dispose of the engine :meth:`from_url` made (a given sessionmaker is the caller's)."""
        if self._engine is not None:
            await self._engine.dispose()

    def watch(self, worker: str) -> CancelWatch:
        """The worker side: tombstones in memory and outcomes written behind."""
        return CancelWatch(self.sessions, worker)

    async def cancel(
        self, message_id: str, *, reason: str = "", scheduled_only: bool = True
    ) -> CancelResult:
        """Cancel one command, wherever it is: in the outbox, in the ladder, or held by a
        worker for its due time. Returns once every live worker has seen the cancel; the
        result says whether it was in time (``status``).

        Raises:
            UnknownCommand: ``message_id`` is not in the outbox and has no recorded
                outcome (with ``scheduled_only=False`` it is cancelled anyway: for a
                command sent with ``Publisher.send``).
        """
        if scheduled_only and not await self.known(message_id):
            raise UnknownCommand(f"no scheduled command {message_id!r}")
        [result] = await self.cancel_many([message_id], reason=reason)
        return result

    async def cancel_many(
        self,
        message_ids: Sequence[str],
        *,
        reason: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> list[CancelResult]:
        """Cancel ``message_ids`` (known or not), :data:`CANCEL_CHUNK` a transaction;
        their results in the order given (an id given twice is cancelled once). Calls
        ``progress(done, total)`` after each chunk."""
        ids = list(dict.fromkeys(message_ids))
        results: list[CancelResult] = []
        for start in range(0, len(ids), CANCEL_CHUNK):
            chunk = ids[start : start + CANCEL_CHUNK]
            results += await cancel_ids(self.sessions, chunk, reason, self.confirm_timeout)
            if progress is not None:
                progress(start + len(chunk), len(ids))
        return results

    async def known(self, message_id: str) -> bool:
        """Whether ``message_id`` is in the outbox, cancelled, or has a recorded outcome."""
        async with self.sessions() as session:
            return await views.known(session, message_id)

    async def cancel_where(
        self,
        *,
        correlation_id: str | None = None,
        command_type: str | None = None,
        queue: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        reason: str = "",
    ) -> list[CancelResult]:
        """Cancel every upcoming command that matches (at least one filter is required):
        e.g. all that is pending for one entity (``correlation_id``).

        Raises:
            InvalidArgument: no filter given.
            DelayError: ``after`` or ``before`` is naive.
        """
        filters = (correlation_id, command_type, queue, after, before)
        if all(value is None for value in filters):
            raise InvalidArgument("cancel_where needs at least one filter")
        matching = await self.upcoming(
            correlation_id=correlation_id,
            command_type=command_type,
            queue=queue,
            after=after,
            before=before,
            limit=None,
        )
        return await self.cancel_many([row.message_id for row in matching], reason=reason)

    async def reschedule(
        self, message_id: str, delay: When | None = None, *, at: datetime | None = None
    ) -> str:
        """Move a scheduled command to a new due time; returns the id it travels under now.

        The same command (type, body, correlation id) is written to the outbox under a new
        message id in the transaction that cancels the old one (its tombstone says
        ``rescheduled as`` the new id), held back from the relay until every worker has
        seen the cancel. If the old command turned out to be running or handled, the copy
        is cancelled before it was ever published: a refused reschedule runs nothing
        twice. A crash before the hold is settled lets the hold expire, and the copy is
        published then: a duplicate at worst, never a loss.

        Raises:
            UnknownCommand: ``message_id`` is not in the outbox.
            CancelTooLate: the old one was handled or running (the new one is cancelled).
            CommandCancelled: the old one was cancelled (rescheduling would revive it).
            DelayError: the new due time cannot be scheduled.
        """
        now = datetime.now(UTC)
        due = due_time(now, delay, at)
        async with self.sessions() as session:
            old = await get(session, message_id)
            cancelled_because = await views.cancel_reason(session, message_id)
        if old is None:
            raise UnknownCommand(f"no scheduled command {message_id!r}")
        if cancelled_because is not None:
            why = f" ({cancelled_because})" if cancelled_because else ""
            raise CommandCancelled(f"{message_id} was cancelled{why}: nothing to reschedule")
        hold_until = now + timedelta(seconds=self.confirm_timeout + HOLD_MARGIN_SECONDS)
        copy = HeldCopy(copy_values(old, str(uuid.uuid4()), due, now), hold_until)
        reason = f"rescheduled as {copy.message_id}"
        [result] = await cancel_ids(
            self.sessions, [message_id], reason, self.confirm_timeout, copy.write
        )
        if copy.written:
            await settle_copy(self.sessions, copy.message_id, message_id, result)
        if result.status is CancelStatus.ALREADY_CANCELLED:
            raise CommandCancelled(f"{message_id} was cancelled: nothing to reschedule")
        if result.status is not CancelStatus.CANCELLED:
            raise CancelTooLate(f"{message_id} is {result.status}: {result.detail}", result)
        return copy.message_id

    async def upcoming(
        self,
        *,
        correlation_id: str | None = None,
        command_type: str | None = None,
        queue: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int | None = 100,
    ) -> list[Scheduled]:
        """Commands neither cancelled nor done, soonest due first (overdue ones too).

        Raises:
            DelayError: ``after`` or ``before`` is naive.
        """
        async with self.sessions() as session:
            return await views.upcoming(
                session,
                correlation_id=correlation_id,
                command_type=command_type,
                queue=queue,
                after=after,
                before=before,
                limit=limit,
            )

    async def history(
        self,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        command_type: str | None = None,
        outcome: str | None = None,
        after: datetime | None = None,
        before: datetime | None = None,
        limit: int | None = 100,
    ) -> list[HistoryEntry]:
        """Recorded outcomes, newest first.

        Raises:
            DelayError: ``after`` or ``before`` is naive.
        """
        async with self.sessions() as session:
            return await views.history(
                session,
                message_id=message_id,
                correlation_id=correlation_id,
                command_type=command_type,
                outcome=outcome,
                after=after,
                before=before,
                limit=limit,
            )

    async def timeline(self, message_id: str) -> Timeline:
        """Scheduled, due, published, cancelled, and every outcome of one command.

        Raises:
            UnknownCommand: nothing is known of ``message_id``.
        """
        async with self.sessions() as session:
            found = await views.timeline(session, message_id)
        if found is None:
            raise UnknownCommand(f"no scheduled command {message_id!r}")
        return found

    async def overview(
        self,
        bucket: timedelta = timedelta(hours=1),
        *,
        after: datetime | None = None,
        before: datetime | None = None,
        command_type: str | None = None,
    ) -> list[OutcomeCount]:
        """Counts per bucket, type and outcome (``"scheduled"`` for what is to come).

        Raises:
            InvalidArgument: ``bucket`` is not a positive whole number of milliseconds.
            DelayError: ``after`` or ``before`` is naive.
        """
        async with self.sessions() as session:
            return await views.overview(
                session, bucket, after=after, before=before, command_type=command_type
            )

    async def trim(self, older_than: timedelta, *, now: datetime | None = None) -> Trimmed:
        """Delete history older than ``older_than``, and the outbox rows and tombstones of
        commands that ended before then. What is still to come is kept. Tombstones of
        commands not in the outbox go by age alone: keep ``older_than`` above your
        longest delay.

        Raises:
            InvalidArgument: ``older_than`` is not positive.
        """
        if older_than <= timedelta(0):
            raise InvalidArgument(f"older_than must be positive, got {older_than}")
        before = require_aware(now or datetime.now(UTC), "now=") - older_than
        async with self.sessions() as session, session.begin():
            return await views.trim(session, before)
