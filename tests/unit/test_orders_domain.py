"""The order's transitions, the reminder's identity, and the outbox's pure parts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from orders.commands import QUEUE, ExpireReservation, expire_command_for, expire_message_id
from orders.demo import EXITED, NO_OUTCOME, REFUNDED, RETRIED, Row, check, outcome_of
from orders.domain import EXPIRY_SLACK, InvalidTransition, Order, OrderStatus
from orders.payments import RecordingGateway, Refund
from orders.settings import OrdersSettings
from orders.store import ReminderEntry, ReminderOutcome
from postdate._errors import CommandDefinitionError
from postdate.broker._topology import Names
from postdate.delay._routing import plan
from postdate.outbox import OutboxRow, envelope_for_row

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def placed() -> Order:
    return Order.place(2500, NOW)


def test_place_reserve_complete() -> None:
    order = placed().reserve(NOW, timedelta(days=7))
    assert order.status is OrderStatus.RESERVED
    assert order.reservation == 1
    assert order.expires_at == NOW + timedelta(days=7)
    done = order.complete(NOW + timedelta(days=1))
    assert done.status is OrderStatus.COMPLETED
    assert done.completed_at == NOW + timedelta(days=1)


def test_expire_only_a_due_reservation() -> None:
    order = placed().reserve(NOW, timedelta(days=7))
    with pytest.raises(InvalidTransition, match="due at"):
        order.expire(NOW + timedelta(days=6))
    assert order.is_due(NOW + timedelta(days=7) - EXPIRY_SLACK)
    cancelled = order.expire(NOW + timedelta(days=7))
    assert cancelled.status is OrderStatus.CANCELLED


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (OrderStatus.PLACED, "complete"),
        (OrderStatus.COMPLETED, "complete"),
        (OrderStatus.CANCELLED, "complete"),
        (OrderStatus.COMPLETED, "expire"),
        (OrderStatus.CANCELLED, "expire"),
        (OrderStatus.RESERVED, "reserve"),
    ],
)
def test_invalid_transitions(status: OrderStatus, action: str) -> None:
    order = Order(uuid.uuid4(), status, 100, NOW, expires_at=NOW)
    transition = {"complete": order.complete, "expire": order.expire, "reserve": order.reserve}
    with pytest.raises(InvalidTransition, match=f"cannot {action}"):
        transition[action](NOW)


def test_invalid_amount_and_hold() -> None:
    with pytest.raises(ValueError, match="amount"):
        Order.place(0, NOW)
    with pytest.raises(ValueError, match="hold"):
        placed().reserve(NOW, timedelta(0))


def test_reminder_identity_is_deterministic() -> None:
    order_id = uuid.uuid4()
    assert expire_message_id(order_id, 1) == f"expire-reservation:{order_id}:1"
    assert expire_message_id(order_id, 2) != expire_message_id(order_id, 1)


def test_expire_command_on_another_queue_keeps_type_and_body() -> None:
    assert expire_command_for(QUEUE) is ExpireReservation
    other = expire_command_for("demo1.orders.expire_reservation")
    assert other.queue == "demo1.orders.expire_reservation"
    assert other.command_type == ExpireReservation.command_type
    order_id = uuid.uuid4()
    assert other(order_id=order_id).model_dump_json() == (
        ExpireReservation(order_id=order_id).model_dump_json()
    )
    with pytest.raises(CommandDefinitionError):
        expire_command_for("bad queue")


def test_settings_hold_defaults_to_seven_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORDERS_HOLD_SECONDS", raising=False)
    assert OrdersSettings.load().hold == timedelta(days=7)
    monkeypatch.setenv("ORDERS_HOLD_SECONDS", "5")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://x@h/db")
    settings = OrdersSettings.load()
    assert settings.hold == timedelta(seconds=5)
    assert settings.database_url == "postgresql+asyncpg://x@h/db"
    monkeypatch.setenv("ORDERS_REFUND_FAIL_RATE", "2")
    with pytest.raises(ValueError, match="refund_fail_rate"):
        OrdersSettings.load()


def test_gateway_rejects_a_bad_fail_rate() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        RecordingGateway(fail_rate=1.5)


def test_outbox_row_travels_with_its_exact_due_time() -> None:
    due = NOW + timedelta(seconds=90, milliseconds=250)
    row = OutboxRow(
        id=1,
        message_id="expire-reservation:x:1",
        queue="orders.expire_reservation",
        type="ExpireReservation",
        body='{"order_id": "x"}',
        due_at=due,
        correlation_id="x",
        created_at=NOW,
        sent_at=None,
        attempts=0,
        last_error=None,
    )
    envelope = envelope_for_row(row)
    assert envelope.message_id == row.message_id
    assert envelope.due_at == due
    assert envelope.correlation_id == "x"
    assert envelope.body == row.body.encode()
    target = plan(Names("p"), envelope, now=NOW)
    assert target.exchange == ""
    assert target.routing_key == "p.delay.6"  # 90 s: highest bit 64
    assert target.cc[-1] == "~>orders.expire_reservation"
    late = plan(Names("p"), envelope, now=due + timedelta(hours=1))
    assert late.exchange == "p.deliver"  # past due: delivered at once


def entry(outcome: ReminderOutcome, detail: str = "") -> ReminderEntry:
    return ReminderEntry(uuid.uuid4(), "m", 1, outcome, detail, NOW)


def test_demo_names_what_the_reminder_did() -> None:
    assert outcome_of([entry(ReminderOutcome.SKIPPED, "picked up")]) == (EXITED, "picked up")
    assert outcome_of([entry(ReminderOutcome.REFUNDED)]) == (REFUNDED, "")
    retried = [entry(ReminderOutcome.FAILED), entry(ReminderOutcome.REFUNDED)]
    assert outcome_of(retried)[0] == RETRIED
    duplicate = [entry(ReminderOutcome.REFUNDED), entry(ReminderOutcome.SKIPPED, "again")]
    assert outcome_of(duplicate)[0] == REFUNDED
    assert outcome_of([entry(ReminderOutcome.FAILED)])[0] == NO_OUTCOME


def test_demo_checks_rows_against_the_invariants() -> None:
    order = placed().reserve(NOW).complete(NOW)
    assert check(Row(order, EXITED, "picked up", 1, ())) == []
    refund = Refund(1, order.id, order.amount_cents, expire_message_id(order.id, 1), NOW)
    assert check(Row(order, EXITED, "", 1, (refund,))) == ["picked up but refunded"]
    cancelled = placed().reserve(NOW).expire(NOW + timedelta(days=8))
    good = Refund(1, cancelled.id, cancelled.amount_cents, expire_message_id(cancelled.id, 1), NOW)
    assert check(Row(cancelled, RETRIED, "", 1, (good,))) == []
    assert check(Row(cancelled, REFUNDED, "", 1, (good, good))) == ["cancelled with 2 refunds"]
    assert check(Row(placed().reserve(NOW), NO_OUTCOME, "", 0, ())) == ["still reserved"]
