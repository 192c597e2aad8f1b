"""The outbox relay process: ``python -m orders.relay`` (one per SQLite database; any
number on PostgreSQL). Publishes scheduled reminders until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

from sqlalchemy.ext.asyncio import async_sessionmaker

from orders.settings import OrdersSettings
from orders.store import OrderStore
from postdate import Publisher, Settings
from postdate.observe._logs import configure_logging, get_logger
from postdate.outbox import OutboxRelay
from postdate.schedule import make_engine

log = get_logger("orders.relay")


async def relay_until(
    stop: asyncio.Event, orders_settings: OrdersSettings, settings: Settings
) -> None:
    """Run one relay until ``stop`` is set.

    Raises:
        BrokerUnavailable: the broker cannot be reached at start-up.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached at start-up.
    """
    engine = make_engine(orders_settings.database_url)
    try:
        if orders_settings.create_schema:
            await OrderStore(engine).create_schema()
        async with Publisher(settings=settings, connection_name="orders-outbox-relay") as pub:
            relay = OutboxRelay(async_sessionmaker(engine, expire_on_commit=False), pub)
            log.info("relay.started", database=engine.url.render_as_string(hide_password=True))
            await relay.run(stop)
            log.info("relay.stopped", published=relay.published, failed=relay.failed)
    finally:
        await engine.dispose()


async def _main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await relay_until(stop, OrdersSettings.load(), Settings.load())


def main() -> None:
    """Entry point of ``python -m orders.relay``: configure logging and run the relay."""
    configure_logging()
    asyncio.run(_main())


if __name__ == "__main__":
    main()
