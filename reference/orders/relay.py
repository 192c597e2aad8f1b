"""The outbox relay of the orders database: ``python -m orders.relay`` (one per SQLite
database; any number on PostgreSQL). It is ``postdate relay`` with the orders tables
created first (``ORDERS_CREATE_SCHEMA``); publishes scheduled reminders until SIGTERM or
SIGINT, with metrics and health on ``POSTDATE_METRICS_PORT`` when set."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from orders.settings import OrdersSettings
from orders.store import OrderStore
from postdate import Settings
from postdate.observe._logs import configure_logging
from postdate.outbox._process import RelayOptions, run_relay, run_relay_until_signalled

__all__ = ["main", "relay_until"]


def options_for(orders_settings: OrdersSettings) -> RelayOptions:
    """The relay of the orders database, creating the orders tables first when asked."""

    async def create_schema(engine: AsyncEngine) -> None:
        await OrderStore(engine).create_schema()

    return RelayOptions(
        orders_settings.database_url,
        create_tables=False,
        prepare=create_schema if orders_settings.create_schema else None,
        connection_name="orders-outbox-relay",
    )


async def relay_until(
    stop: asyncio.Event, orders_settings: OrdersSettings, settings: Settings
) -> None:
    """Run one relay until ``stop`` is set.

    Raises:
        BrokerUnavailable: the broker cannot be reached at start-up.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached at start-up.
    """
    await run_relay(stop, options_for(orders_settings), settings)


def main() -> None:
    """Entry point of ``python -m orders.relay``: configure logging and run the relay."""
    configure_logging()
    asyncio.run(run_relay_until_signalled(options_for(OrdersSettings.load()), Settings.load()))


if __name__ == "__main__":
    main()
