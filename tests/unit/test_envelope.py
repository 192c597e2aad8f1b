"""The envelope as AMQP message fields (the real round trip is in integration tests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from uuid import UUID

import aio_pika

from postdate._clock import from_epoch_ms, to_epoch_ms
from postdate._command import Command
from postdate.publish._envelope import (
    ATTEMPT,
    DUE,
    QUEUE,
    SCHEMA,
    SCHEMA_VERSION,
    Envelope,
)

DUE_AT = datetime(2030, 5, 17, 8, 30, 15, 123_000, tzinfo=UTC)
ORDER = UUID("12345678-1234-5678-1234-567812345678")


class ExpireReservation(Command, queue="orders.expire_reservation"):
    order_id: UUID


class Renamed(Command, queue="orders.renamed", name="orders.Renamed"):
    n: int


def test_for_command() -> None:
    envelope = Envelope.for_command(
        ExpireReservation(order_id=ORDER), DUE_AT, correlation_id="corr-1"
    )
    assert envelope.type == "ExpireReservation"
    assert envelope.queue == "orders.expire_reservation"
    assert json.loads(envelope.body) == {"order_id": str(ORDER)}
    assert envelope.due_at == DUE_AT
    assert envelope.attempt == 1
    assert envelope.correlation_id == "corr-1"
    assert str(UUID(envelope.message_id)) == envelope.message_id
    assert envelope.timestamp.tzinfo is not None


def test_message_ids_are_unique_unless_given() -> None:
    command = Renamed(n=1)
    assert Envelope.for_command(command, DUE_AT).message_id != (
        Envelope.for_command(command, DUE_AT).message_id
    )
    assert Envelope.for_command(command, DUE_AT, message_id="key-1").message_id == "key-1"
    assert Envelope.for_command(command, DUE_AT).type == "orders.Renamed"


def test_properties_fields() -> None:
    envelope = Envelope.for_command(
        ExpireReservation(order_id=ORDER), DUE_AT, message_id="m-1", correlation_id="c-1"
    )
    message = envelope.properties()
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == "m-1"
    assert message.correlation_id == "c-1"
    assert message.message_type == "ExpireReservation"
    assert message.timestamp is not None
    assert message.headers == {
        DUE: to_epoch_ms(DUE_AT),
        ATTEMPT: 1,
        SCHEMA: SCHEMA_VERSION,
        QUEUE: "orders.expire_reservation",
    }
    assert message.headers[DUE] == 1_905_237_015_123


def test_properties_with_cc() -> None:
    envelope = Envelope.for_command(Renamed(n=2), DUE_AT)
    message = envelope.properties(["~0>", "~>orders.renamed"])
    assert message.headers is not None
    assert message.headers["CC"] == ["~0>", "~>orders.renamed"]
    assert "CC" not in (envelope.properties([]).headers or {})


def test_next_attempt_keeps_identity_and_adds_headers() -> None:
    envelope = Envelope.for_command(Renamed(n=3), DUE_AT)
    again = envelope.next_attempt(**{"x-postdate-reason": "boom"})
    assert again.attempt == 2
    assert again.message_id == envelope.message_id
    assert again.body == envelope.body
    assert again.headers()[ATTEMPT] == 2
    assert again.headers()["x-postdate-reason"] == "boom"
    assert again.next_attempt().attempt == 3
    assert envelope.attempt == 1  # frozen: the original is unchanged


def test_epoch_ms_round_trip() -> None:
    assert from_epoch_ms(to_epoch_ms(DUE_AT)) == DUE_AT
    assert to_epoch_ms(DUE_AT + timedelta(microseconds=400)) == to_epoch_ms(DUE_AT) + 1  # up
    assert to_epoch_ms(DUE_AT + timedelta(microseconds=1)) == to_epoch_ms(DUE_AT) + 1
    assert to_epoch_ms(DUE_AT - timedelta(microseconds=999)) == to_epoch_ms(DUE_AT)
    assert from_epoch_ms(0) == datetime(1970, 1, 1, tzinfo=UTC)
