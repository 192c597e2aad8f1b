"""The service's tables (its own ``MetaData``; the outbox brings its own)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
)

from orders.domain import OrderStatus
from postdate.outbox import UTCDateTime

metadata = MetaData()

_STATUSES = ", ".join(f"'{status.value}'" for status in OrderStatus)


def _id() -> Column[int]:
    return Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )


orders = Table(
    "orders",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("placed_at", UTCDateTime(), nullable=False),
    Column("reservation", Integer, nullable=False, default=0),
    Column("reserved_at", UTCDateTime()),
    Column("expires_at", UTCDateTime()),
    Column("completed_at", UTCDateTime()),
    Column("cancelled_at", UTCDateTime()),
    CheckConstraint(f"status IN ({_STATUSES})", name="ck_orders_status"),
    CheckConstraint("amount_cents > 0", name="ck_orders_amount"),
)
Index("ix_orders_status_expires", orders.c.status, orders.c.expires_at)

refunds = Table(
    "refunds",
    metadata,
    _id(),
    Column("order_id", Uuid, ForeignKey("orders.id"), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    # The payment gateway's idempotency key: one refund per key, ever.
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
)
Index("ix_refunds_order", refunds.c.order_id)

reminder_log = Table(
    "reminder_log",
    metadata,
    _id(),
    Column("order_id", Uuid, nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # refunded | skipped | failed
    Column("detail", Text, nullable=False, default=""),
    Column("at", UTCDateTime(), nullable=False),
)
Index("ix_reminder_log_order", reminder_log.c.order_id, reminder_log.c.id)
