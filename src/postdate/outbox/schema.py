"""The outbox table: its column type for aware datetimes, its schema and its row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    exists,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from postdate._clock import require_aware

TABLE_NAME = "postdate_outbox"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    Stored as UTC (``timestamptz`` on PostgreSQL, naive UTC text on SQLite) and always
    read back aware. Binding a naive datetime raises :class:`~postdate.DelayError`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """The value as stored: UTC, naive on SQLite.

        Raises:
            DelayError: ``value`` is naive.
        """
        if value is None:
            return None
        value = require_aware(value, "datetime").astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """The stored value as an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def bigint_id() -> Column[int]:
    """An auto-incrementing primary key `id`, BIGINT where the database has it."""
    # SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for volume.
    return Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )


outbox_metadata = MetaData()
"""The outbox's own metadata: ``await conn.run_sync(outbox_metadata.create_all)``."""

outbox_table = Table(
    TABLE_NAME,
    outbox_metadata,
    bigint_id(),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("queue", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),
    # The same instant in epoch milliseconds: portable arithmetic for the overview.
    Column("due_ms", BigInteger, nullable=False),
    Column("correlation_id", String(255), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
)
Index(
    "ix_postdate_outbox_pending",
    outbox_table.c.id,
    postgresql_where=outbox_table.c.sent_at.is_(None),
    sqlite_where=outbox_table.c.sent_at.is_(None),
)
Index("ix_postdate_outbox_due", outbox_table.c.due_ms)
Index("ix_postdate_outbox_correlation", outbox_table.c.correlation_id, outbox_table.c.due_ms)

# A cancelled command's tombstone (postdate.schedule): the relay skips its outbox row.
# Workers read the tombstones newer than the last id they saw, so an id must never come
# back: on SQLite a plain INTEGER PRIMARY KEY hands out the highest id again once it was
# deleted (trim), AUTOINCREMENT never does.
cancel_table = Table(
    "postdate_cancel",
    outbox_metadata,
    bigint_id(),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("too_late_by", String(255), nullable=True),
    sqlite_autoincrement=True,
)

# An outbox row the relay must not publish yet: the copy a reschedule wrote, until the
# old command's fate is settled. A hold past ``expires_at`` (its writer crashed) is
# ignored: the copy goes out, a duplicate at worst, never a loss.
hold_table = Table(
    "postdate_hold",
    outbox_metadata,
    Column("message_id", String(255), primary_key=True),
    Column("expires_at", UTCDateTime(), nullable=False),
)


def not_cancelled() -> ColumnElement[bool]:
    """Outbox rows without a tombstone."""
    return ~exists().where(cancel_table.c.message_id == outbox_table.c.message_id)


def not_held(now: datetime) -> ColumnElement[bool]:
    """Outbox rows without a hold that is still in force at ``now``."""
    return ~exists().where(
        hold_table.c.message_id == outbox_table.c.message_id, hold_table.c.expires_at > now
    )


def create_tables(connection: Connection) -> None:
    """Create the outbox and schedule tables that are missing, and upgrade a SQLite
    tombstone table made before its ids were AUTOINCREMENT (``connection.run_sync``)."""
    if cancel_ids_reusable(connection):
        _upgrade_cancel_ids(connection)
    outbox_metadata.create_all(connection)


def cancel_ids_reusable(connection: Connection) -> bool:
    """Whether the tombstone table is a SQLite one whose ids can come back after a trim."""
    if connection.dialect.name != "sqlite":
        return False
    found = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (cancel_table.name,)
    ).scalar()
    return found is not None and "AUTOINCREMENT" not in str(found).upper()


def _upgrade_cancel_ids(connection: Connection) -> None:
    """Rebuild the tombstone table with AUTOINCREMENT ids, keeping every row, and start
    its ids above any a worker has already seen."""
    old, columns = f"{cancel_table.name}_before_upgrade", ", ".join(cancel_table.c.keys())
    connection.exec_driver_sql(f"ALTER TABLE {cancel_table.name} RENAME TO {old}")
    cancel_table.create(connection)
    connection.exec_driver_sql(
        f"INSERT INTO {cancel_table.name} ({columns}) SELECT {columns} FROM {old}"
    )
    connection.exec_driver_sql(f"DROP TABLE {old}")
    seen = "SELECT max(seen_cancel_id) FROM postdate_watcher"
    if not connection.dialect.has_table(connection, "postdate_watcher"):
        seen = "SELECT 0"
    # sqlite_sequence has no key: one row per table, replaced by hand
    connection.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = ?", (cancel_table.name,))
    connection.exec_driver_sql(
        "INSERT INTO sqlite_sequence (name, seq) VALUES (?, max("
        f"coalesce((SELECT max(id) FROM {cancel_table.name}), 0), coalesce(({seen}), 0)))",
        (cancel_table.name,),
    )


@dataclass(frozen=True)
class OutboxRow:
    """One scheduled command as stored in the outbox."""

    id: int
    message_id: str
    queue: str
    type: str
    body: str
    due_at: datetime
    correlation_id: str | None
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    last_error: str | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> OutboxRow:
        """The row of a ``SELECT`` on :data:`outbox_table`."""
        return cls(
            id=row.id,
            message_id=row.message_id,
            queue=row.queue,
            type=row.type,
            body=row.body,
            due_at=row.due_at,
            correlation_id=row.correlation_id,
            created_at=row.created_at,
            sent_at=row.sent_at,
            attempts=row.attempts,
            last_error=row.last_error,
        )

    @property
    def relayed(self) -> bool:
        """The relay published this row and the broker confirmed it."""
        return self.sent_at is not None
