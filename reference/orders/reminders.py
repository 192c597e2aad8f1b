"""The expiry reminder's handler, as a postdate consumer app.

The handler is idempotent by design: the conditional cancel lets only one delivery (or a
pickup) win, and the refund carries the message id as idempotency key. Consumer
processes run it with ``python -m consumers.expire_reservation``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orders.commands import ExpireReservation, expire_command_for
from orders.domain import EXPIRY_SLACK
from orders.payments import PaymentGateway, RecordingGateway
from orders.settings import OrdersSettings
from orders.store import OrderStore
from postdate import Consumer, Context, Retry, RetryPolicy, Skip

DEFAULT_RETRIES = RetryPolicy(
    max_attempts=8,
    tiers=(
        timedelta(seconds=10),
        timedelta(minutes=1),
        timedelta(minutes=10),
        timedelta(hours=1),
    ),
)
"""A payment provider outage is retried for about four hours before the reminder is parked."""


@dataclass(frozen=True)
class Services:
    """What the handler needs: the order store and the payment gateway."""

    store: OrderStore
    gateway: PaymentGateway


ServicesProvider = Callable[[], Awaitable[Services]]


class LazyServices:
    """Builds the store and gateway from :class:`OrdersSettings` on first use.

    consumers/expire_reservation.py calls :meth:`get` from the worker's start-up hook, so
    the pool opens (and, with ``ORDERS_CREATE_SCHEMA``, the default, missing tables are
    created, the schedule store's among them) before the first message, and before the
    worker starts reading cancels from the schedule store (the worker's own, on
    ``POSTDATE_SCHEDULE_URL``: :meth:`OrdersSettings.worker_settings` defaults it to
    ``DATABASE_URL``); :meth:`close` runs as its shutdown hook.
    """

    def __init__(self, settings: OrdersSettings | None = None) -> None:
        self._settings = settings
        self._services: Services | None = None
        self._lock = asyncio.Lock()

    @property
    def settings(self) -> OrdersSettings:
        """The settings given, else loaded from the environment on first access.

        Raises:
            ValueError: the environment holds an invalid setting.
        """
        if self._settings is None:
            self._settings = OrdersSettings.load()
        return self._settings

    async def get(self) -> Services:
        """The services, built once.

        Raises:
            ValueError: invalid settings.
            sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
        """
        if self._services is not None:
            return self._services
        async with self._lock:
            if self._services is None:
                settings = self.settings
                store = OrderStore.from_url(
                    settings.database_url,
                    command=expire_command_for(settings.expire_queue),
                    hold=settings.hold,
                )
                if settings.create_schema:
                    await store.create_schema()
                gateway = RecordingGateway(
                    fail_rate=settings.refund_fail_rate, seed=settings.refund_fail_seed
                )
                self._services = Services(store, gateway)
            return self._services

    async def close(self) -> None:
        """Close the store's engine if the services were built; ``get`` builds anew."""
        if self._services is not None:
            await self._services.store.close()
            self._services = None


def build_app(
    services: Services | ServicesProvider,
    *,
    command: type[ExpireReservation] = ExpireReservation,
    retries: RetryPolicy = DEFAULT_RETRIES,
    slack: timedelta = EXPIRY_SLACK,
) -> Consumer:
    """A consumer app whose handler expires reservations (``command`` names the queue).

    The handler exits early (``Skip``) when the order was picked up, already cancelled,
    or the reminder is stale; refunds and cancels in one transaction otherwise; and
    lets a payment failure propagate, so that the retry tiers try again.

    Run it in a worker with the schedule store on the orders database
    (``Worker(app, settings, schedule=store.schedule())``, or ``POSTDATE_SCHEDULE_URL``):
    a pickup cancels its reminder, which that worker then acks as ``cancelled`` without
    calling the handler. The handler's state check stays as the safety net (a worker
    without the store, or a reminder already running when the pickup committed).
    """
    app = Consumer()

    async def provide() -> Services:
        return services if isinstance(services, Services) else await services()

    @app.handler(command, retries=retries)
    async def expire_reservation(cmd: ExpireReservation, ctx: Context) -> None:
        found = await provide()
        try:
            expiry = await found.store.expire(
                cmd,
                message_id=ctx.message_id,
                attempt=ctx.attempt,
                gateway=found.gateway,
                slack=slack,
            )
        except Exception as error:
            with contextlib.suppress(Exception):  # the log is best effort; the retry is not
                await found.store.log_failure(
                    cmd.order_id, message_id=ctx.message_id, attempt=ctx.attempt, error=error
                )
            raise
        if expiry.retry_at is not None:
            raise Retry(expiry.reason, after=max(expiry.retry_at - datetime.now(UTC), timedelta(0)))
        if expiry.refund is None:
            raise Skip(expiry.reason)
        ctx.log.info(
            "reservation.expired",
            order_id=str(cmd.order_id),
            refund_id=expiry.refund.id,
            amount_cents=expiry.refund.amount_cents,
        )

    return app
