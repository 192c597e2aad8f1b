"""Helpers of the orders and outbox tests: the database of one test, SQLite (a temporary
file) or PostgreSQL (a schema of its own in ``DATABASE_URL``'s database).

The fixtures built on these (``database``, ``postgres``, ``expire_command``, ``store``)
live in ``tests/integration/conftest.py``, so tests just name them. PostgreSQL is skipped
when it cannot be reached, and fails the test when ``CI=true``.

Run as a module, it is a relay process the tests kill mid-batch::

    python -m tests.integration.orders_fixtures DATABASE_URL SCHEMA PREFIX STAGE
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orders.store import OrderStore
from postdate import Publisher, Settings
from postdate.outbox import OutboxRelay, OutboxRow, RelayHooks
from postdate.schedule import make_engine

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
