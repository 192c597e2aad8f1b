"""Expire in-store pickup reservations: ``python -m orders.worker`` (or
``postdate-orders-worker``, or ``postdate worker orders.worker:app``, see below; the
repository's ``consumers/expire_reservation.py`` runs the same).

Reads ``DATABASE_URL`` (default ``sqlite+aiosqlite:///./orders.db``; PostgreSQL with
``postgresql+asyncpg://...``), ``ORDERS_EXPIRE_QUEUE``, ``ORDERS_REFUND_FAIL_RATE`` and
the usual ``RABBITMQ_URL``/``POSTDATE_*``. The database is opened when the worker starts.
Scheduled reminders leave the outbox through a relay: ``python -m orders.relay``.

The worker runs with the schedule store on the orders database: ``POSTDATE_SCHEDULE_URL``
defaults to ``DATABASE_URL`` (:meth:`OrdersSettings.worker_settings`; set it to use
another database). So a reminder whose order was picked up (the pickup writes its cancel
in the same transaction) is acked as ``cancelled`` without calling the handler, and every
outcome is recorded in the orders database for ``ScheduleStore.history`` and
``timeline``. The start-up hook creates the missing tables (``ORDERS_CREATE_SCHEMA``, the
default), the schedule's among them, before the worker reads the cancels.

``postdate worker orders.worker:app`` reads its settings before it imports
this module, so the default does not apply there: set ``POSTDATE_SCHEDULE_URL`` yourself
(without it that worker neither checks cancels nor records outcomes; the handler still
exits early for a picked-up order). consumers/supervisord.conf runs ``python -m``.
"""

from __future__ import annotations

from orders.commands import expire_command_for
from orders.reminders import LazyServices, build_app
from orders.settings import OrdersSettings
from postdate import run

settings = OrdersSettings.load()
services = LazyServices(settings)
app = build_app(services.get, command=expire_command_for(settings.expire_queue))


@app.on_startup
async def open_store() -> None:
    """Connect to the database (and create missing tables) before consuming."""
    await services.get()


app.on_shutdown(services.close)


def main() -> None:
    """Run the worker until SIGTERM/SIGINT (``postdate-orders-worker``)."""
    run(app, settings.worker_settings())


if __name__ == "__main__":
    main()
