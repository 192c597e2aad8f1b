"""The reference service: in-store pickup reservations that expire.

An order is placed; when an employee takes the item off the shelf it is reserved and an
:class:`~orders.commands.ExpireReservation` is scheduled (through the transactional
outbox) for the end of the hold period. A pickup completes the order and cancels the
reminder in the same transaction (:func:`postdate.schedule.cancel_in`): a worker with the
schedule store acks it as ``cancelled`` without calling the handler, which would exit
early anyway. Otherwise the reminder refunds the payment and cancels the order, exactly
once however often it is delivered.
"""

from orders.commands import ExpireReservation, expire_message_id
from orders.domain import (
    DEFAULT_HOLD,
    InvalidTransition,
    Order,
    OrderError,
    OrderNotFound,
    OrderStatus,
)
from orders.payments import PaymentGateway, PaymentUnavailable, RecordingGateway, Refund
from orders.store import OrderStore
from postdate.schedule import make_engine

__all__ = [
    "DEFAULT_HOLD",
    "ExpireReservation",
    "InvalidTransition",
    "Order",
    "OrderError",
    "OrderNotFound",
    "OrderStatus",
    "OrderStore",
    "PaymentGateway",
    "PaymentUnavailable",
    "RecordingGateway",
    "Refund",
    "expire_message_id",
    "make_engine",
]
