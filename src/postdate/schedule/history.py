"""Writing outcome rows to ``postdate_history`` in bulk, cheaply.

Going through ``session.execute(insert(...), dicts)`` costs SQLAlchemy's per-row
parameter processing: most of a worker's CPU per message spent on its history. So each
round's rows go in as one driver-level operation: one ``INSERT ... SELECT FROM
json_each(?)`` on SQLite, elsewhere one executemany of an insert compiled once per dialect
(on PostgreSQL, COPY measured no cheaper), with each column's bind processor applied as
SQLAlchemy would. Should a SQLAlchemy release compile it in a way this module does not
expect, it falls back to the plain insert (logged once): slower, never wrong.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from postdate.observe._logs import get_logger
from postdate.schedule.tables import history_table

log = get_logger(__name__)

# A history row as record() queues it: these columns' values, in this order.
HISTORY_COLUMNS = (
    "message_id",
    "queue",
    "type",
    "correlation_id",
    "attempt",
    "outcome",
    "detail",
    "at",
    "at_ms",
    "worker",
)
Row = tuple[Any, ...]


@dataclass(frozen=True)
class HistoryInsert:
    """The history insert as the driver takes it, compiled once per dialect: one
    executemany of parameter sets made straight from queued rows. Going through
    ``session.execute(insert(...), dicts)`` instead costs SQLAlchemy's per-row parameter
    processing, most of the writer's CPU time per message."""

    sql: str
    params: Callable[[list[Row]], list[Any]]
    names: tuple[str, ...] = ()  # the columns in the order ``params`` gives their values

    @property
    def sqlite_json_sql(self) -> str:
        """SQLite: the same insert taking every row at once as one JSON array of arrays
        (``json_each``): sqlite3 binds one parameter instead of ten per row, so its thread
        spends the insert in SQLite, without the GIL the event loop needs."""
        columns = ", ".join(self.names)
        values = ", ".join(f"json_extract(value, '$[{n}]')" for n in range(len(self.names)))
        return f"INSERT INTO {history_table.name} ({columns}) SELECT {values} FROM json_each(?)"

    @classmethod
    def compile(cls, dialect: Dialect) -> HistoryInsert:
        """The statement and parameter maker for ``dialect`` (``inline``: no RETURNING)."""
        statement = insert(history_table).inline()
        compiled = statement.compile(dialect=dialect, column_keys=list(HISTORY_COLUMNS))
        # Each column's bind processor, as SQLAlchemy would apply it (e.g. UTCDateTime:
        # aware UTC, naive text on SQLite); None where the driver takes the value as is.
        processors = {
            name: history_table.c[name].type.bind_processor(dialect) for name in HISTORY_COLUMNS
        }
        if compiled.positional and compiled.positiontup is not None:
            names = list(compiled.positiontup)
        else:
            names = [compiled.bind_names[b] for b in compiled.binds.values()]
        if sorted(names) != sorted(HISTORY_COLUMNS):
            raise RuntimeError(f"unexpected history insert parameters: {names}")
        pick = operator.itemgetter(*(HISTORY_COLUMNS.index(name) for name in names))
        convert = [
            (position, processor)
            for position, name in enumerate(names)
            if (processor := processors[name]) is not None
        ]

        def positional(rows: list[Row]) -> list[Any]:
            sets = []
            for row in rows:
                values = list(pick(row))
                for position, processor in convert:
                    values[position] = processor(values[position])
                sets.append(tuple(values))
            return sets

        def named(rows: list[Row]) -> list[Any]:
            return [dict(zip(names, values, strict=True)) for values in positional(rows)]

        return cls(compiled.string, positional if compiled.positional else named, tuple(names))


_plans: dict[str, HistoryInsert | None] = {}


async def insert_history(session: AsyncSession, rows: list[Row]) -> None:
    """Insert ``rows`` (values in :data:`HISTORY_COLUMNS` order) in ``session``'s
    transaction.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database refused the insert.
    """
    connection = await session.connection()
    dialect = connection.dialect
    key = f"{dialect.name}+{dialect.driver}"
    if key not in _plans:
        try:
            _plans[key] = HistoryInsert.compile(dialect)
        except Exception as exc:  # an unexpected compile: the plain insert instead
            log.warning("schedule.history_insert.fallback", error=repr(exc))
            _plans[key] = None
    plan = _plans[key]
    if plan is None:
        await session.execute(
            insert(history_table), [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in rows]
        )
        return
    if dialect.name == "sqlite" and plan.names:
        batch = orjson.dumps(plan.params(rows)).decode()
        await connection.exec_driver_sql(plan.sqlite_json_sql, (batch,))
        return
    await connection.exec_driver_sql(plan.sql, plan.params(rows))
