"""Fixtures of the orders and outbox tests: one database per test, SQLite (a temporary file)
or PostgreSQL (a schema of its own in ``DATABASE_URL``'s database), and an order store on it.

The helpers they use (:class:`Database`, :func:`require_postgres`, ...) are in
:mod:`tests.integration.orders_fixtures`. PostgreSQL is skipped when it cannot be reached,
and fails the test when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from orders.commands import ExpireReservation, expire_command_for
from orders.store import OrderStore
from postdate import Publisher
from postdate.observe import _logs
from postdate.outbox import OutboxRelay
from postdate.schedule import make_engine
from tests.integration.orders_fixtures import BACKENDS, Database, require_postgres


@pytest.fixture(autouse=True)
def _logging_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command run in-process (typer's CliRunner) must not configure logging for the
    tests after it: configure_logging would bind the cached loggers to the runner's
    stream, closed once the command returns, at the level the command asked for."""
    monkeypatch.setattr(_logs, "_configured", True)


@pytest.fixture(name="database", params=BACKENDS)
async def database_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Database]:
    """A fresh, empty database: SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}")
        return
    async for database in _postgres_database():
        yield database


@pytest.fixture(name="postgres")
async def postgres_fixture() -> AsyncIterator[Database]:
    """A fresh PostgreSQL schema (for tests that only make sense there)."""
    async for database in _postgres_database():
        yield database


async def _postgres_database() -> AsyncIterator[Database]:
    url = await require_postgres()
    schema = f"orders_t{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    try:
        async with admin.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield Database("postgresql", url, schema)
    finally:
        async with admin.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture(name="expire_command")
def expire_command_fixture(prefix: str) -> type[ExpireReservation]:
    """The reminder command on a queue of this test's own."""
    return expire_command_for(f"{prefix}.orders.expire_reservation")


@pytest.fixture(name="store")
async def store_fixture(
    database: Database, expire_command: type[ExpireReservation]
) -> AsyncIterator[OrderStore]:
    """An order store with its tables created, on the test's database."""
    store = OrderStore(database.engine(), command=expire_command)
    await store.create_schema()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def relay(store: OrderStore, publisher: Publisher) -> AsyncIterator[OutboxRelay]:
    """An outbox relay on the store's database, running in the background for the test."""
    running = OutboxRelay(store.sessions, publisher, poll_interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    yield running
    stop.set()
    await task
