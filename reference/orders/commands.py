"""The command the service schedules: expire a reservation when its hold ends."""

from __future__ import annotations

import types
import uuid
from typing import cast

from postdate import Command

QUEUE = "orders.expire_reservation"


class ExpireReservation(Command, queue=QUEUE):
    """Refund and cancel ``order_id`` unless it was picked up during reservation number
    ``reservation``."""

    order_id: uuid.UUID
    reservation: int = 1


def expire_message_id(order_id: uuid.UUID, reservation: int) -> str:
    """The reminder's deterministic message id, also the refund's idempotency key."""
    return f"expire-reservation:{order_id}:{reservation}"


def expire_command_for(queue: str) -> type[ExpireReservation]:
    """An :class:`ExpireReservation` delivered to another queue (same type name and body).

    Demos and tests run side by side on one broker, each with its own queue.

    Raises:
        CommandDefinitionError: ``queue`` is not a valid queue name.
    """
    if queue == QUEUE:
        return ExpireReservation
    return cast(
        type[ExpireReservation],
        types.new_class(
            "ExpireReservation",
            (ExpireReservation,),
            {"queue": queue, "name": ExpireReservation.command_type},
        ),
    )
