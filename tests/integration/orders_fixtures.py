"""Fixtures and helpers of the orders and outbox tests: one database per test, SQLite (a
temporary file) or PostgreSQL (a schema of its own in ``DATABASE_URL``'s database).

Import the fixtures under their ``*_fixture`` names (``# noqa: F401``). PostgreSQL is
skipped when it cannot be reached, and fails the test when ``CI=true``.

Run as a module, it is a relay process the tests kill mid-batch::

    python -m tests.integration.orders_fixtures DATABASE_URL SCHEMA PREFIX STAGE
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orders.commands import ExpireReservation, expire_command_for
from orders.store import OrderStore, make_engine
from postdate import Publisher, Settings
from postdate.outbox import OutboxRelay, OutboxRow, RelayHooks

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")


def postgres_url() -> str:
    """``DATABASE_URL`` when it names PostgreSQL, else the local default."""
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgresql") else DEFAULT_POSTGRES_URL


_postgres_problem: list[str | None] = []


async def _probe_postgres(url: str) -> str | None:
    engine = make_engine(url, connect_args={"timeout": 3})
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # any failure to connect means: not available here
        return repr(exc)
    finally:
        await engine.dispose()


async def require_postgres() -> str:
    """The PostgreSQL URL, or skip (fail under ``CI=true``) when it is not reachable."""
    url = postgres_url()
    if not _postgres_problem:
        _postgres_problem.append(await _probe_postgres(url))
    problem = _postgres_problem[0]
    if problem is not None:
        message = f"PostgreSQL not reachable at {url} ({problem})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true requires PostgreSQL", pytrace=False)
        pytest.skip(message)
    return url


@dataclass(frozen=True)
class Database:
    """A database of one test: ``url`` plus what every engine on it needs."""

    backend: str
    url: str
    schema: str | None = None

    def engine(self, **kwargs: Any) -> AsyncEngine:
        if self.schema is not None:
            kwargs["connect_args"] = {"server_settings": {"search_path": self.schema}}
        return make_engine(self.url, **kwargs)


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


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(interval)


# --- the relay that gets killed ------------------------------------------------------------

STAGES = ("before_publish", "after_publish")
READY = "BATCH-READY"


def relay_child_command(database: Database, prefix: str, stage: str) -> list[str]:
    """argv of a relay process that stops dead at ``stage`` of its first batch."""
    return [
        sys.executable,
        "-m",
        "tests.integration.orders_fixtures",
        database.url,
        database.schema or "",
        prefix,
        stage,
    ]


async def _hang_relay(url: str, schema: str, prefix: str, stage: str) -> None:
    database = Database("postgresql" if schema else "sqlite", url, schema or None)
    engine = database.engine()
    store = OrderStore(engine)

    async def hang(rows: Sequence[OutboxRow]) -> None:
        print(READY, len(rows), flush=True)
        await asyncio.sleep(3600)  # killed here, mid-batch

    hooks = (
        RelayHooks(before_publish=hang)
        if stage == "before_publish"
        else RelayHooks(after_publish=hang)
    )
    settings = Settings.load(prefix=prefix, connect_attempts=3)
    async with Publisher(settings=settings, declare=False, connection_name="killed relay") as pub:
        await OutboxRelay(store.sessions, pub, hooks=hooks).relay_once()


if __name__ == "__main__":
    asyncio.run(_hang_relay(*sys.argv[1:5]))
