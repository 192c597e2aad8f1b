"""The payment gateway boundary, and an implementation that records refunds in the database.

Refunds are idempotent by key: the reminder passes its message id, so however often it
is delivered, one order is refunded once. :class:`RecordingGateway` records the refund
in the caller's transaction under a ``UNIQUE`` idempotency key, and can be told to fail
a share of its calls (before recording anything) to show retries.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import insert, select
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from orders.tables import refunds


class PaymentUnavailable(Exception):
    """The payment provider failed transiently; nothing was refunded. Try again later."""


@dataclass(frozen=True)
class Refund:
    """A recorded refund (a ``refunds`` row)."""

    id: int
    order_id: uuid.UUID
    amount_cents: int
    idempotency_key: str
    created_at: datetime
    replayed: bool = False  # an earlier call with the same key had already refunded

    @classmethod
    def from_row(cls, row: Row[Any], *, replayed: bool = False) -> Refund:
        """The refund a ``refunds`` row holds; ``replayed`` marks a repeated key."""
        return cls(
            row.id, row.order_id, row.amount_cents, row.idempotency_key, row.created_at, replayed
        )


class PaymentGateway(Protocol):
    """Refunds a payment, at most once per idempotency key."""

    async def refund(
        self,
        session: AsyncSession,
        *,
        order_id: uuid.UUID,
        amount_cents: int,
        idempotency_key: str,
    ) -> Refund:
        """Refund ``amount_cents`` for ``order_id``; a repeated key returns the first refund.

        ``session`` is the caller's open transaction: an implementation that records
        refunds in the database commits or rolls back with the caller's change.

        Raises:
            PaymentUnavailable: transient failure, nothing refunded.
        """
        ...


class RecordingGateway:
    """Records refunds in the ``refunds`` table; fails ``fail_rate`` of calls transiently.

    Failures are drawn from ``random.Random(seed)`` and raised before anything is written.
    ``calls``, ``failures`` and ``replays`` count what happened.
    """

    def __init__(self, *, fail_rate: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within [0, 1], got {fail_rate}")
        self.fail_rate = fail_rate
        self._random = random.Random(seed)
        self.calls = 0
        self.failures = 0
        self.replays = 0

    async def refund(
        self,
        session: AsyncSession,
        *,
        order_id: uuid.UUID,
        amount_cents: int,
        idempotency_key: str,
    ) -> Refund:
        """Record a refund in ``session``'s transaction under ``idempotency_key``.

        Raises:
            PaymentUnavailable: drawn with probability ``fail_rate``; nothing recorded.
            sqlalchemy.exc.IntegrityError: the order does not exist.
        """
        self.calls += 1
        if self.fail_rate and self._random.random() < self.fail_rate:
            self.failures += 1
            raise PaymentUnavailable(f"payment provider unavailable (refund {idempotency_key})")
        try:
            # A savepoint: a duplicate key must not abort the caller's transaction.
            async with session.begin_nested():
                result = await session.execute(
                    insert(refunds)
                    .values(
                        order_id=order_id,
                        amount_cents=amount_cents,
                        idempotency_key=idempotency_key,
                        created_at=datetime.now(UTC),
                    )
                    .returning(*refunds.c)
                )
                return Refund.from_row(result.one())
        except IntegrityError:
            existing = await session.execute(
                select(refunds).where(refunds.c.idempotency_key == idempotency_key)
            )
            row = existing.first()
            if row is None:
                raise  # not a duplicate key (e.g. an unknown order)
            self.replays += 1
            return Refund.from_row(row, replayed=True)
