"""The order and its life: placed, reserved (held on the shelf), then completed or cancelled.

Transitions are pure functions of an order and the clock. The store applies each one as a
conditional update (``... WHERE status = <the state it leaves>``), so when two of them race
(a pickup and the expiry reminder) exactly one wins on any database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

DEFAULT_HOLD = timedelta(days=7)
"""How long a reserved item stays on the shelf before the reservation expires."""

EXPIRY_SLACK = timedelta(seconds=2)
"""A reminder may arrive this much before the reservation's expiry (clock skew)."""


class OrderStatus(StrEnum):
    """Where an order is in its life (stored as its value)."""

    PLACED = "placed"
    RESERVED = "reserved"
    COMPLETED = "completed"  # picked up by the customer
    CANCELLED = "cancelled"  # reservation expired: refunded and cancelled


class OrderError(Exception):
    """Base of the order domain's errors."""


class OrderNotFound(OrderError, LookupError):
    """No order with this id."""

    def __init__(self, order_id: uuid.UUID) -> None:
        self.order_id = order_id
        super().__init__(f"order {order_id} not found")


class InvalidTransition(OrderError):
    """The order is not in a state the requested change can start from."""

    def __init__(self, order_id: uuid.UUID, action: str, status: OrderStatus, why: str = ""):
        self.order_id = order_id
        self.action = action
        self.status = status
        detail = f": {why}" if why else ""
        super().__init__(f"cannot {action} order {order_id}: it is {status.value}{detail}")


@dataclass(frozen=True)
class Order:
    """An in-store pickup order, with the time of each step it went through."""

    id: uuid.UUID
    status: OrderStatus
    amount_cents: int
    placed_at: datetime
    reservation: int = 0  # how many times it was reserved; names the current reminder
    reserved_at: datetime | None = None
    expires_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None

    @classmethod
    def place(cls, amount_cents: int, now: datetime, order_id: uuid.UUID | None = None) -> Order:
        """A new order for ``amount_cents``.

        Raises:
            ValueError: the amount is not positive.
        """
        if amount_cents <= 0:
            raise ValueError(f"amount must be positive, got {amount_cents}")
        return cls(order_id or uuid.uuid4(), OrderStatus.PLACED, amount_cents, now)

    def reserve(self, now: datetime, hold: timedelta = DEFAULT_HOLD) -> Order:
        """Taken off the shelf: held for the customer until ``now + hold``.

        Raises:
            InvalidTransition: the order is not placed.
            ValueError: ``hold`` is not positive.
        """
        if hold <= timedelta(0):
            raise ValueError(f"hold must be positive, got {hold}")
        self._require(OrderStatus.PLACED, "reserve")
        return replace(
            self,
            status=OrderStatus.RESERVED,
            reservation=self.reservation + 1,
            reserved_at=now,
            expires_at=now + hold,
        )

    def complete(self, now: datetime) -> Order:
        """Picked up by the customer.

        Raises:
            InvalidTransition: the order is not reserved (e.g. the reservation expired).
        """
        self._require(OrderStatus.RESERVED, "complete")
        return replace(self, status=OrderStatus.COMPLETED, completed_at=now)

    def is_due(self, now: datetime, slack: timedelta = EXPIRY_SLACK) -> bool:
        """The reservation has expired (give or take ``slack``)."""
        return self.expires_at is not None and self.expires_at <= now + slack

    def expire(self, now: datetime, slack: timedelta = EXPIRY_SLACK) -> Order:
        """The hold ended without a pickup: cancelled (the caller refunds).

        Raises:
            InvalidTransition: the order is not reserved, or its reservation is not due.
        """
        self._require(OrderStatus.RESERVED, "expire")
        if not self.is_due(now, slack):
            assert self.expires_at is not None
            raise InvalidTransition(
                self.id, "expire", self.status, f"due at {self.expires_at.isoformat()}"
            )
        return replace(self, status=OrderStatus.CANCELLED, cancelled_at=now)

    def _require(self, status: OrderStatus, action: str) -> None:
        if self.status is not status:
            raise InvalidTransition(self.id, action, self.status)
