"""The schedule store's tables, in the outbox's metadata (one ``create_all`` makes all).

- ``postdate_cancel``: one durable tombstone per cancelled message id. Its ``id`` orders
  cancels, so a worker reads only the new ones; ``too_late_by`` names a worker that had
  already started the command when it saw the tombstone.
- ``postdate_history``: what each delivery of a scheduled command finally did (one row
  per outcome: handled, skipped, retried, poisoned, cancelled), written by workers.
- ``postdate_watcher``: each worker that checks cancels, with the last tombstone it has
  seen and when it last said so: a cancel waits for every live one to have seen it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from postdate.outbox.schema import UTCDateTime, bigint_id, cancel_table, outbox_metadata

__all__ = ["cancel_table", "history_table", "watcher_table"]

history_table = Table(
    "postdate_history",
    outbox_metadata,
    bigint_id(),
    Column("message_id", String(255), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("type", String(255), nullable=False),
    Column("correlation_id", String(255), nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("at", UTCDateTime(), nullable=False),
    # The same instant in epoch milliseconds: portable arithmetic for the overview.
    Column("at_ms", BigInteger, nullable=False),
    Column("worker", String(255), nullable=False),
)
Index("ix_postdate_history_message", history_table.c.message_id)
Index("ix_postdate_history_correlation", history_table.c.correlation_id, history_table.c.at_ms)
Index("ix_postdate_history_at", history_table.c.at_ms)

watcher_table = Table(
    "postdate_watcher",
    outbox_metadata,
    Column("name", String(255), primary_key=True),
    Column("seen_cancel_id", BigInteger, nullable=False),
    Column("beat_at", UTCDateTime(), nullable=False),
)
