"""An async SQLAlchemy engine set up for the schedule's concurrent writers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from postdate._extras import require

SQLITE_BUSY_TIMEOUT = 30.0
DRIVER_EXTRAS = {"aiosqlite": "sql", "asyncpg": "postgres"}


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite:///...`` or
    ``postgresql+asyncpg://...``), set up for concurrent writers.

    On SQLite: WAL journal, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for every
    transaction, so a transaction that reads before it writes waits for the write lock
    instead of failing with "database is locked" when another writer got there first
    (SQLite transactions are serialised; savepoints work).

    Raises:
        sqlalchemy.exc.ArgumentError: ``url`` is not a database URL SQLAlchemy knows.
        ModuleNotFoundError: its driver is not installed (the message names the extra).
    """
    for driver, extra in DRIVER_EXTRAS.items():
        if f"+{driver}" in url.split("://", 1)[0]:
            require(driver, f"a {url.split('+', 1)[0]} database", extra)
    if not url.startswith("sqlite"):
        return create_async_engine(url, **kwargs)
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT, **kwargs.pop("connect_args", {})}
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
