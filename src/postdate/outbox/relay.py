"""The outbox relay: publishes pending rows with confirms and marks them sent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from postdate._errors import InvalidArgument
from postdate.observe._logs import get_logger
from postdate.outbox.schema import OutboxRow, not_cancelled, not_held, outbox_table
from postdate.publish._envelope import Envelope
from postdate.publish._publisher import Publisher

log = get_logger(__name__)

MAX_ERROR_CHARS = 2_000
# Dialects whose SELECT ... FOR UPDATE SKIP LOCKED lets several relays share the table.
LOCKING_DIALECTS = frozenset({"postgresql", "mysql", "mariadb", "oracle"})


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
    next pass (after the rows that never failed). A :class:`~postdate.PublishTimeout`
    may have arrived: sending the row again with its message id is the right answer
    (a duplicate at worst).

    Raises:
        InvalidArgument: ``batch_size`` below 1 or ``poll_interval`` not positive.
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
            raise InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
        if poll_interval <= 0:
            raise InvalidArgument(f"poll_interval must be positive, got {poll_interval}")
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
        sent: list[int] = []
        errors: dict[int, str] = {}
        results = await self.publisher.publish_each([envelope_for_row(row) for row in rows])
        for row, result in zip(rows, results, strict=True):
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
        .where(outbox_table.c.sent_at.is_(None), not_cancelled(), not_held(datetime.now(UTC)))
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
