"""Expire in-store pickup reservations: ``postdate worker consumers.expire_reservation:app``
or ``python -m consumers.expire_reservation``.

Reads ``DATABASE_URL`` (default ``sqlite+aiosqlite:///./orders.db``; PostgreSQL with
``postgresql+asyncpg://...``), ``ORDERS_EXPIRE_QUEUE``, ``ORDERS_REFUND_FAIL_RATE`` and
the usual ``RABBITMQ_URL``/``POSTDATE_*``. The database is opened when the worker starts.
Scheduled reminders leave the outbox through a relay: ``python -m orders.relay``.
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

if __name__ == "__main__":
    run(app)
