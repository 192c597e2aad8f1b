"""The order store on SQLAlchemy 2 (async): SQLite (aiosqlite) by default, PostgreSQL
(asyncpg) when ``DATABASE_URL`` says so.

Every state change is one conditional ``UPDATE ... WHERE status = <from>``, so racing
changes (a late pickup and the expiry reminder, or a reminder delivered twice) cannot
both win. Reserving writes the order change and the scheduled reminder (an outbox row)
in one transaction; a pickup writes the order change and the reminder's cancel (a
tombstone in the schedule store, :func:`postdate.schedule.cancel_in`) in one transaction,
so a worker with the schedule store acks the reminder as ``cancelled`` without running
the handler (whose state check stays as the safety net for workers without it, and for a
reminder already running when the pickup committed).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from orders.commands import ExpireReservation, expire_message_id
from orders.domain import (
    DEFAULT_HOLD,
    EXPIRY_SLACK,
    InvalidTransition,
    Order,
    OrderNotFound,
    OrderStatus,
)
from orders.payments import PaymentGateway, Refund
from orders.tables import metadata, orders, refunds, reminder_log
from postdate import outbox
from postdate.schedule import Scheduled, ScheduleStore, cancel_in, views
from postdate.schedule.engine import make_engine


class ReminderOutcome(StrEnum):
    """What one delivery of the expiry reminder did (one ``reminder_log`` row each)."""

    REFUNDED = "refunded"  # refunded and cancelled
    SKIPPED = "skipped"  # exited early: nothing to do
    FAILED = "failed"  # raised (e.g. the payment provider was down): retried later
    EARLY = "early"  # arrived before the reservation expired (clock skew): retried later


@dataclass(frozen=True)
class ReminderEntry:
    """One ``reminder_log`` row: what one delivery of a reminder did, and when."""

    order_id: uuid.UUID
    message_id: str
    attempt: int
    outcome: ReminderOutcome
    detail: str
    at: datetime


@dataclass(frozen=True)
class Expiry:
    """The result of expiring a reservation: the refund, or why nothing was done, and
    ``retry_at`` when the reminder came too early and must be tried again then."""

    refund: Refund | None
    reason: str = ""
    retry_at: datetime | None = None


class OrderStore:
    """Orders, refunds and the reminder log in one database.

    ``command`` is the reminder class to schedule (its queue), ``hold`` the default hold
    period. ``sessions`` makes sessions (e.g. for an :class:`~postdate.outbox.OutboxRelay`).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        command: type[ExpireReservation] = ExpireReservation,
        hold: timedelta = DEFAULT_HOLD,
    ) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.command = command
        self.hold = hold

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> OrderStore:
        """A store on a new engine for ``url`` (see :func:`make_engine`)."""
        return cls(make_engine(url), **kwargs)

    @property
    def dialect(self) -> str:
        """The database's dialect name (``sqlite``, ``postgresql``)."""
        return self.engine.dialect.name

    def schedule(self) -> ScheduleStore:
        """The schedule store on this database and engine (cancels, history, timelines):
        give it to the worker (``Worker(app, settings, schedule=store.schedule())``)."""
        return ScheduleStore(self.sessions)

    async def create_schema(self) -> None:
        """Create the service's tables, the outbox table and the schedule store's tables
        (cancels, history, workers: all in ``outbox_metadata``) where missing."""
        async with self.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            await connection.run_sync(outbox.create_tables)

    async def drop_schema(self) -> None:
        """Drop the outbox and schedule tables and the service's tables, with their rows."""
        async with self.engine.begin() as connection:
            await connection.run_sync(outbox.outbox_metadata.drop_all)
            await connection.run_sync(metadata.drop_all)

    async def close(self) -> None:
        """Dispose of the engine and its connection pool."""
        await self.engine.dispose()

    # --- commands ---------------------------------------------------------------------

    async def place(self, amount_cents: int, *, now: datetime | None = None) -> Order:
        """Place a new order.

        Raises:
            ValueError: the amount is not positive.
        """
        order = Order.place(amount_cents, now or datetime.now(UTC))
        async with self.sessions() as session, session.begin():
            await session.execute(
                insert(orders).values(
                    id=order.id,
                    status=order.status.value,
                    amount_cents=order.amount_cents,
                    placed_at=order.placed_at,
                    reservation=order.reservation,
                )
            )
        return order

    async def reserve(
        self,
        order_id: uuid.UUID,
        *,
        hold: timedelta | None = None,
        now: datetime | None = None,
        schedule: bool = True,
    ) -> Order:
        """Reserve a placed order and schedule its expiry reminder, in one transaction.

        The reminder is an outbox row (message id :func:`expire_message_id`, due at the
        end of the hold); a relay publishes it after the commit. ``schedule=False`` only
        changes the order (for comparison in benchmarks).

        Raises:
            OrderNotFound: no such order.
            InvalidTransition: the order is not placed.
            ValueError: ``hold`` is not positive.
            DelayError: ``hold`` is longer than the delay ladder reaches.
        """
        hold = self.hold if hold is None else hold
        if hold <= timedelta(0):
            raise ValueError(f"hold must be positive, got {hold}")
        now = now or datetime.now(UTC)
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(orders)
                .where(orders.c.id == order_id, orders.c.status == OrderStatus.PLACED.value)
                .values(
                    status=OrderStatus.RESERVED.value,
                    reservation=orders.c.reservation + 1,
                    reserved_at=now,
                    expires_at=now + hold,
                )
                .returning(*orders.c)
            )
            row = result.first()
            if row is None:
                raise await self._refusal(session, order_id, "reserve")
            order = _order(row)
            if schedule:
                assert order.expires_at is not None
                await outbox.schedule(
                    session,
                    self.command(order_id=order.id, reservation=order.reservation),
                    at=order.expires_at,
                    message_id=expire_message_id(order.id, order.reservation),
                    correlation_id=str(order.id),
                    now=now,
                )
        return order

    async def complete(self, order_id: uuid.UUID, *, now: datetime | None = None) -> Order:
        """The customer picked the order up; cancels its expiry reminder in the same
        transaction (a tombstone for :func:`expire_message_id` of the current reservation,
        reason ``picked up``): both commit, or neither.

        Raises:
            OrderNotFound: no such order.
            InvalidTransition: the order is not reserved (placed, already completed, or
                cancelled because the reservation expired first).
        """
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(orders)
                .where(orders.c.id == order_id, orders.c.status == OrderStatus.RESERVED.value)
                .values(status=OrderStatus.COMPLETED.value, completed_at=now or datetime.now(UTC))
                .returning(*orders.c)
            )
            row = result.first()
            if row is None:
                raise await self._refusal(session, order_id, "complete")
            order = _order(row)
            await cancel_in(
                session, [expire_message_id(order.id, order.reservation)], reason="picked up"
            )
            return order

    async def expire(
        self,
        command: ExpireReservation,
        *,
        message_id: str,
        attempt: int,
        gateway: PaymentGateway,
        now: datetime | None = None,
        slack: timedelta = EXPIRY_SLACK,
    ) -> Expiry:
        """Refund and cancel the order of an expiry reminder, in one transaction.

        First the conditional cancel (only a reserved order of this reservation, due
        within ``slack``, becomes cancelled: it also locks the row), then the refund under
        ``message_id`` as idempotency key, then the log entry; all commit together. A
        pickup racing it changes zero rows, or makes this cancel change zero rows: exactly
        one wins. When there is nothing to do, the reason is logged and returned (and
        nothing is refunded); a reminder for the current reservation that arrives before
        its expiry (clock skew beyond ``slack``) returns ``retry_at`` instead.

        Raises:
            PaymentUnavailable: the gateway failed; the transaction rolled back, the order
                is still reserved.
        """
        now = now or datetime.now(UTC)
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(orders)
                .where(
                    orders.c.id == command.order_id,
                    orders.c.status == OrderStatus.RESERVED.value,
                    orders.c.reservation == command.reservation,
                    orders.c.expires_at <= now + slack,
                )
                .values(status=OrderStatus.CANCELLED.value, cancelled_at=now)
                .returning(orders.c.amount_cents)
            )
            amount = result.scalar_one_or_none()
            if amount is None:
                reason, retry_at = await self._nothing_to_expire(session, command, now, slack)
                outcome = "skipped" if retry_at is None else "early"
                await _log(session, command.order_id, message_id, attempt, outcome, reason, now)
                return Expiry(None, reason, retry_at)
            refund = await gateway.refund(
                session,
                order_id=command.order_id,
                amount_cents=amount,
                idempotency_key=message_id,
            )
            detail = f"refund {refund.id}: {amount} cents" + (" (replayed)" * refund.replayed)
            await _log(session, command.order_id, message_id, attempt, "refunded", detail, now)
            return Expiry(refund)

    async def log_failure(
        self, order_id: uuid.UUID, *, message_id: str, attempt: int, error: BaseException
    ) -> None:
        """Record a failed reminder attempt (its own transaction)."""
        async with self.sessions() as session, session.begin():
            await _log(session, order_id, message_id, attempt, "failed", repr(error)[:500], None)

    # --- queries ----------------------------------------------------------------------

    async def get(self, order_id: uuid.UUID) -> Order:
        """The order ``order_id``.

        Raises:
            OrderNotFound: no such order.
        """
        async with self.sessions() as session:
            row = (await session.execute(select(orders).where(orders.c.id == order_id))).first()
        if row is None:
            raise OrderNotFound(order_id)
        return _order(row)

    async def all_orders(self) -> list[Order]:
        """Every order, oldest placed first."""
        async with self.sessions() as session:
            result = await session.execute(select(orders).order_by(orders.c.placed_at))
            return [_order(row) for row in result]

    async def refunds(self, order_id: uuid.UUID | None = None) -> list[Refund]:
        """The refunds recorded (of ``order_id`` only, if given), in recording order."""
        query = select(refunds).order_by(refunds.c.id)
        if order_id is not None:
            query = query.where(refunds.c.order_id == order_id)
        async with self.sessions() as session:
            return [Refund.from_row(row) for row in await session.execute(query)]

    async def reminder_log(self, order_id: uuid.UUID | None = None) -> list[ReminderEntry]:
        """The reminder log (of ``order_id`` only, if given), in logging order."""
        query = select(reminder_log).order_by(reminder_log.c.id)
        if order_id is not None:
            query = query.where(reminder_log.c.order_id == order_id)
        async with self.sessions() as session:
            return [
                ReminderEntry(
                    row.order_id,
                    row.message_id,
                    row.attempt,
                    ReminderOutcome(row.outcome),
                    row.detail,
                    row.at,
                )
                for row in await session.execute(query)
            ]

    async def upcoming(self, order_id: uuid.UUID) -> list[Scheduled]:
        """What is scheduled for this order and not done yet (relayed or not)."""
        async with self.sessions() as session:
            return await views.upcoming(session, correlation_id=str(order_id))

    # --- helpers ----------------------------------------------------------------------

    async def _refusal(
        self, session: AsyncSession, order_id: uuid.UUID, action: str
    ) -> OrderNotFound | InvalidTransition:
        row = (await session.execute(select(orders).where(orders.c.id == order_id))).first()
        if row is None:
            return OrderNotFound(order_id)
        order = _order(row)
        why = "the reservation expired" if order.status is OrderStatus.CANCELLED else ""
        return InvalidTransition(order_id, action, order.status, why)

    async def _nothing_to_expire(
        self, session: AsyncSession, command: ExpireReservation, now: datetime, slack: timedelta
    ) -> tuple[str, datetime | None]:
        row = (await session.execute(select(orders).where(orders.c.id == command.order_id))).first()
        if row is None:
            return "order not found", None
        order = _order(row)
        if order.status is OrderStatus.COMPLETED:
            return "picked up", None
        if order.status is OrderStatus.CANCELLED:
            return "already cancelled", None
        if order.reservation != command.reservation:
            stale = f"stale reminder: reservation {command.reservation}, now {order.reservation}"
            return stale, None
        if order.status is not OrderStatus.RESERVED:
            return f"order is {order.status.value}", None
        if not order.is_due(now, slack) and order.expires_at is not None:
            return f"not yet due: expires at {order.expires_at.isoformat()}", order.expires_at
        return "order changed meanwhile", None  # pragma: no cover - the update matched


async def _log(
    session: AsyncSession,
    order_id: uuid.UUID,
    message_id: str,
    attempt: int,
    outcome: str,
    detail: str,
    now: datetime | None,
) -> None:
    await session.execute(
        insert(reminder_log).values(
            order_id=order_id,
            message_id=message_id,
            attempt=attempt,
            outcome=outcome,
            detail=detail,
            at=now or datetime.now(UTC),
        )
    )


def _order(row: Row[Any]) -> Order:
    return Order(
        id=row.id,
        status=OrderStatus(row.status),
        amount_cents=row.amount_cents,
        placed_at=row.placed_at,
        reservation=row.reservation,
        reserved_at=row.reserved_at,
        expires_at=row.expires_at,
        completed_at=row.completed_at,
        cancelled_at=row.cancelled_at,
    )
