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

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from postdate import ladder
from postdate.command import Command
from postdate.envelope import Envelope, to_epoch_ms
from postdate.errors import DelayError
from postdate.publisher import Publisher, Route, When, due_time, route
from postdate.topology import Names

log = structlog.get_logger("postdate.outbox")

TABLE_NAME = "postdate_outbox"
MAX_ERROR_CHARS = 2_000
# Dialects whose SELECT ... FOR UPDATE SKIP LOCKED lets several relays share the table.
LOCKING_DIALECTS = frozenset({"postgresql", "mysql", "mariadb", "oracle"})


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    Stored as UTC (``timestamptz`` on PostgreSQL, naive UTC text on SQLite) and always
    read back aware. Binding a naive datetime raises ``ValueError``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: give it a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bigint_id() -> Column[int]:
    # SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for volume.
    return Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )


outbox_metadata = MetaData()
"""The outbox's own metadata: ``await conn.run_sync(outbox_metadata.create_all)``."""

outbox_table = Table(
    TABLE_NAME,
    outbox_metadata,
    _bigint_id(),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("queue", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),
    # The same instant in epoch milliseconds: portable arithmetic for the overview.
    Column("due_ms", BigInteger, nullable=False),
    Column("correlation_id", String(255), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
)
Index(
    "ix_postdate_outbox_pending",
    outbox_table.c.id,
    postgresql_where=outbox_table.c.sent_at.is_(None),
    sqlite_where=outbox_table.c.sent_at.is_(None),
)
Index("ix_postdate_outbox_due", outbox_table.c.due_ms)
Index("ix_postdate_outbox_correlation", outbox_table.c.correlation_id, outbox_table.c.due_ms)


@dataclass(frozen=True)
class OutboxRow:
    """One scheduled command as stored in the outbox."""

    id: int
    message_id: str
    queue: str
    type: str
    body: str
    due_at: datetime
    correlation_id: str | None
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    last_error: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> OutboxRow:
        return cls(
            id=row.id,
            message_id=row.message_id,
            queue=row.queue,
            type=row.type,
            body=row.body,
            due_at=row.due_at,
            correlation_id=row.correlation_id,
            created_at=row.created_at,
            sent_at=row.sent_at,
            attempts=row.attempts,
            last_error=row.last_error,
        )

    @property
    def relayed(self) -> bool:
        """The relay published this row and the broker confirmed it."""
        return self.sent_at is not None


def _values(
    command: Command,
    due: datetime,
    now: datetime,
    message_id: str | None,
    correlation_id: str | None,
) -> dict[str, Any]:
    return {
        "message_id": message_id or str(uuid.uuid4()),
        "queue": command.queue,
        "type": command.command_type,
        "body": command.model_dump_json(),
        "due_at": due,
        "due_ms": to_epoch_ms(due),
        "correlation_id": correlation_id,
        "created_at": now,
        "attempts": 0,
    }


def _check_due(now: datetime, delay: When | None, at: datetime | None) -> datetime:
    due = due_time(now, delay, at)
    ladder.ladder_seconds(due, now)  # refuses a due time beyond the ladder's reach
    return due


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
        sqlalchemy.exc.IntegrityError: ``message_id`` is already in the outbox.
    """
    now = now or datetime.now(UTC)
    values = _values(command, _check_due(now, delay, at), now, message_id, correlation_id)
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
        _values(command, _check_due(now, when, None), now, None, correlation_id)
        for command, when in items
    ]
    if rows:
        await session.execute(insert(outbox_table), rows)
    return [str(row["message_id"]) for row in rows]


def envelope_for_row(row: OutboxRow) -> Envelope:
    """The envelope a stored row travels in: its message id, type, body and exact due time."""
    return Envelope(
        message_id=row.message_id,
        type=row.type,
        queue=row.queue,
        body=row.body.encode(),
        due_at=row.due_at,
        correlation_id=row.correlation_id,
        timestamp=row.created_at,
    )


def route_for_row(names: Names, row: OutboxRow, now: datetime | None = None) -> Route:
    """Where a stored row is published now: the ladder entry for the time left until due.

    Raises:
        DelayError: the due time is further away than the ladder reaches.
    """
    seconds = ladder.ladder_seconds(row.due_at, now or datetime.now(UTC))
    return route(names, row.queue, seconds)


BatchHook = Callable[[Sequence[OutboxRow]], Awaitable[None]]


@dataclass(frozen=True)
class RelayHooks:
    """Fault-injection and observation points of a relay (tests, demos, metrics).

    ``before_publish`` runs after a batch was selected (and locked) and before anything is
    published; ``after_publish`` after the broker confirmed it and before it is marked
    sent. An exception raised there aborts the batch, which stays pending.
    """

    before_publish: BatchHook | None = None
    after_publish: BatchHook | None = None


class OutboxRelay:
    """Publishes pending outbox rows with confirms and marks them sent.

    ``session_factory`` makes a new :class:`AsyncSession` per batch (an
    ``async_sessionmaker``); ``publisher`` is a started :class:`Publisher`. On a database
    with ``SKIP LOCKED`` (``lock_rows`` defaults to that) the batch stays locked from the
    select until it is marked sent, so concurrent relays never take the same rows. On
    SQLite the batch is read, published, then marked in a second short transaction, so the
    database is not locked during network I/O: run one relay there.

    A row is marked sent only after the broker confirmed it; a row whose publish failed
    stays pending with ``attempts`` and ``last_error`` updated and is tried again on the
    next pass (after the rows that never failed).

    Raises:
        ValueError: ``batch_size`` below 1 or ``poll_interval`` not positive.
    """

    def __init__(
        self,
        session_factory: Callable[[], AsyncSession],
        publisher: Publisher,
        *,
        batch_size: int = 200,
        poll_interval: float = 0.5,
        lock_rows: bool | None = None,
        hooks: RelayHooks | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.session_factory = session_factory
        self.publisher = publisher
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lock_rows = lock_rows
        self.hooks = hooks or RelayHooks()
        self.published = 0
        self.failed = 0
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """Wake a running :meth:`run` loop now instead of at its next poll."""
        self._wake.set()

    def _locking(self, session: AsyncSession) -> bool:
        if self.lock_rows is None:
            self.lock_rows = session.get_bind().dialect.name in LOCKING_DIALECTS
        return self.lock_rows

    async def relay_once(self) -> int:
        """Publish one batch of pending rows; returns how many were confirmed and marked.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed (nothing is marked then;
                whatever was published goes out again on a later pass).
            Exception: whatever a hook raised.
        """
        async with self.session_factory() as session:
            if self._locking(session):
                async with session.begin():
                    rows = await _pending(session, self.batch_size, lock=True)
                    if not rows:
                        return 0
                    sent, errors = await self._publish(rows)
                    await _mark(session, sent, errors)
            else:
                async with session.begin():
                    rows = await _pending(session, self.batch_size, lock=False)
                if not rows:
                    return 0
                sent, errors = await self._publish(rows)
                async with session.begin():
                    await _mark(session, sent, errors)
        self.published += len(sent)
        self.failed += len(errors)
        if errors:
            log.warning(
                "outbox.publish_failed",
                failed=len(errors),
                published=len(sent),
                first_error=next(iter(errors.values())),
            )
        return len(sent)

    async def _publish(self, rows: Sequence[OutboxRow]) -> tuple[list[int], dict[int, str]]:
        if self.hooks.before_publish is not None:
            await self.hooks.before_publish(rows)
        now = datetime.now(UTC)
        sent: list[int] = []
        errors: dict[int, str] = {}
        prepared: list[tuple[Envelope, Route]] = []
        publishable: list[OutboxRow] = []
        for row in rows:
            try:
                prepared.append(
                    (envelope_for_row(row), route_for_row(self.publisher.names, row, now))
                )
                publishable.append(row)
            except DelayError as exc:
                errors[row.id] = repr(exc)[:MAX_ERROR_CHARS]
        results = await self.publisher.publish_each(prepared)
        for row, result in zip(publishable, results, strict=True):
            if result is None:
                sent.append(row.id)
            else:
                errors[row.id] = repr(result)[:MAX_ERROR_CHARS]
        if self.hooks.after_publish is not None:
            await self.hooks.after_publish(rows)
        return sent, errors

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set: a new pass at once after a full batch, otherwise
        after ``poll_interval`` (or :meth:`notify`). Database or broker failures are logged
        and retried with backoff, never raised."""
        backoff = self.poll_interval
        while not stop.is_set():
            try:
                sent = await self.relay_once()
            except Exception as exc:  # keep relaying: nothing is lost, rows stay pending
                log.error("outbox.relay_failed", error=repr(exc))
                await _wait_any(stop, None, backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = self.poll_interval
            if sent >= self.batch_size:
                await asyncio.sleep(0)
                continue
            await _wait_any(stop, self._wake, self.poll_interval)
            self._wake.clear()


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _pending(session: AsyncSession, limit: int, *, lock: bool) -> list[OutboxRow]:
    query: Select[Any] = (
        select(outbox_table)
        .where(outbox_table.c.sent_at.is_(None))
        # rows whose publish failed before go last, so they cannot starve the others
        .order_by(outbox_table.c.attempts, outbox_table.c.id)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    result = await session.execute(query)
    return [OutboxRow.from_row(row) for row in result]


async def _mark(session: AsyncSession, sent: list[int], errors: dict[int, str]) -> None:
    table = outbox_table
    if sent:
        await session.execute(
            update(table)
            .where(table.c.id.in_(sent), table.c.sent_at.is_(None))
            .values(sent_at=datetime.now(UTC), attempts=table.c.attempts + 1, last_error=None)
        )
    for row_id, error in errors.items():
        await session.execute(
            update(table)
            .where(table.c.id == row_id)
            .values(attempts=table.c.attempts + 1, last_error=error)
        )


# --- the schedule as data ---------------------------------------------------------------


async def pending_count(session: AsyncSession) -> int:
    """Rows not yet published (committed but not confirmed by the broker)."""
    result = await session.execute(
        select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
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
    table = outbox_table
    start = after or datetime.now(UTC)
    conditions = [table.c.due_ms >= _epoch_ms(start, "after")]
    if before is not None:
        conditions.append(table.c.due_ms < _epoch_ms(before, "before"))
    if queue is not None:
        conditions.append(table.c.queue == queue)
    if command_type is not None:
        conditions.append(table.c.type == command_type)
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
        ValueError: ``bucket`` is not a positive whole number of milliseconds.
        DelayError: ``after`` or ``before`` is naive.
    """
    size = int(bucket.total_seconds() * 1000)
    if size <= 0 or size != bucket.total_seconds() * 1000:
        raise ValueError(f"bucket {bucket} must be a positive whole number of milliseconds")
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
            outbox_table.c.due_ms < _epoch_ms(due_before, "due_before"),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _epoch_ms(moment: datetime, name: str) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise DelayError(f"{name}={moment.isoformat()} is naive: give it a timezone")
    return to_epoch_ms(moment)


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
    "route_for_row",
    "schedule",
    "schedule_many",
    "schedule_overview",
    "upcoming",
]
