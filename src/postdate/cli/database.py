"""The schedule store's database for `postdate schedule`: which one, an engine that fails
fast, and a session whose errors are one line and an exit code.

The database is ``--db URL``, else ``POSTDATE_SCHEDULE_URL``, else ``DATABASE_URL`` (an
SQLAlchemy async URL, e.g. ``sqlite+aiosqlite:///orders.db`` or
``postgresql+asyncpg://host/db``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker

from postdate._errors import CancelTooLate, CommandCancelled, UnknownCommand
from postdate._settings import Settings
from postdate.cli._errors import fail
from postdate.cli.common import CLI_CONNECT_TIMEOUT, run_async
from postdate.schedule import ScheduleStore, make_engine

T = TypeVar("T")

Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="the schedule's database (SQLAlchemy async URL); "
        "default POSTDATE_SCHEDULE_URL, else DATABASE_URL",
        show_default=False,
    ),
]


def database_url(given: str | None) -> str:
    """``--db``, else ``POSTDATE_SCHEDULE_URL``, else ``DATABASE_URL``; exit 2 without one."""
    url = given or Settings.load().schedule_url or os.environ.get("DATABASE_URL")
    if not url:
        fail(
            "no schedule database: give --db URL or set POSTDATE_SCHEDULE_URL (or "
            "DATABASE_URL), e.g. sqlite+aiosqlite:///orders.db"
        )
    return url


def shown(url: str) -> str:
    """``url`` without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)


def engine_options(url: str) -> dict[str, Any]:
    """What an operator's engine needs beyond :func:`make_engine`'s: PostgreSQL that cannot
    be reached fails in seconds, as the broker does.

    Raises:
        sqlalchemy.exc.ArgumentError: ``url`` is not a database URL.
    """
    if make_url(url).drivername == "postgresql+asyncpg":
        return {"connect_args": {"timeout": CLI_CONNECT_TIMEOUT}}
    return {}


def on_schedule(url: str, use: Callable[[ScheduleStore], Awaitable[T]]) -> T:
    """Run ``use`` on a store for ``url``, then close it. An unknown id or a cancel too late
    is exit code 1; bad input, an unreachable database or missing tables exit code 2."""

    async def session() -> T:
        engine = make_engine(url, **engine_options(url))
        try:
            return await use(ScheduleStore(async_sessionmaker(engine, expire_on_commit=False)))
        finally:
            await engine.dispose()

    return run_async(
        session,
        found_nothing=(UnknownCommand, CancelTooLate, CommandCancelled),
        failed=partial(database_failed, url),  # the database's and its driver's errors
    )


def database_failed(url: str, exc: Exception) -> NoReturn:
    """An error of the database at ``url`` or of its driver as one line and exit code 2.

    Raises:
        Failure: ``exc`` is the database's or its driver's (see :func:`database_problem`).
        Exception: ``exc`` itself, when it is not.
    """
    problem = database_problem(url, exc)
    if problem is None:
        raise exc
    fail(problem)


def database_problem(url: str, exc: Exception) -> str | None:
    """What went wrong with the database at ``url`` (its password hidden), in one line, or
    None when ``exc`` is not an error of the database or of its driver."""
    where = shown(url)
    if isinstance(exc, ArgumentError):
        return f"{where} is not a database URL: {exc}"
    if isinstance(exc, ImportError | SQLAlchemyError) and not isinstance(exc, DBAPIError):
        return (
            f"cannot use {where}: {exc}; give an async driver, e.g. postgresql+asyncpg://... "
            "or sqlite+aiosqlite:///..."
        )
    text = str(exc.orig if isinstance(exc, DBAPIError) else exc) or type(exc).__name__
    lowered = text.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        return f"the schedule's tables are missing in {where}: run `postdate schedule init`"
    if isinstance(exc, OSError | TimeoutError):
        return f"cannot reach the schedule database {where}: {text.splitlines()[0]}"
    if isinstance(exc, DBAPIError):
        return f"the schedule database {where} refused: {text.splitlines()[0]}"
    return None
