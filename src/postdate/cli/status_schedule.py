"""`postdate status`'s look at the schedule: how many commands are overdue (needs the sql
extra, so status imports this module only when a schedule database is configured)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from postdate.cli.database import database_problem, engine_options
from postdate.outbox._process import overdue_count
from postdate.schedule.engine import make_engine
from postdate.schedule.records import OVERDUE_GRACE


async def count_overdue(url: str) -> tuple[int | None, str | None]:
    """The overdue commands in the outbox at ``url``, or None and why it could not be read.

    Raises:
        Exception: a failure that is not the database's (a bug: not hidden).
    """
    try:
        engine = make_engine(url, **engine_options(url))
        try:
            async with AsyncSession(engine) as session:
                due_before = datetime.now(UTC) - OVERDUE_GRACE
                return await overdue_count(session, due_before), None
        finally:
            await engine.dispose()
    except Exception as exc:
        problem = database_problem(url, exc)
        if problem is None:
            raise
        return None, problem
