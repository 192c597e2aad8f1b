"""The envelope through a real broker: decoded as sent, republished without broker headers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from postdate._command import Command
from postdate._errors import InvalidMessage
from postdate.broker._topology import QueueSpec, Topology, command_queue_topology, quorum
from postdate.delay import _ladder as ladder
from postdate.delay._routing import LADDER_LEAD
from postdate.publish._envelope import ATTEMPT, BROKER_HEADERS, DUE, QUEUE, SCHEMA, Envelope
from postdate.publish._publisher import Publisher
from tests.helpers import Cleanup, collect, command_for, derive


class Reserve(Command, queue="unused.reserve"):
    order_id: UUID
    note: str


def deaths(headers: dict[str, Any]) -> list[dict[str, Any]]:
    """The x-death entries of a delivery, newest first."""
    entries = headers.get("x-death") or []
    assert isinstance(entries, list)
    return [dict(entry) for entry in entries]


def death_queues(headers: dict[str, Any]) -> list[str]:
    return [str(entry["queue"]) for entry in deaths(headers)]


async def test_envelope_round_trip(
    publisher: Publisher, connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    queue = f"{prefix}.reserve"
    await cleanup.declare(connection, command_queue_topology(prefix, queue))
    kind = derive(Reserve, queue)
    command = kind(order_id=uuid4(), note="pick-up by 18:00 ✓")
    due = datetime.now(UTC) - timedelta(seconds=1)  # overdue: delivered at once
    sent_id = await publisher.send(command, at=due, message_id="idem-42", correlation_id="c-7")

    [received] = await collect(connection, queue, 1, timeout=5)
    message = received.message
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.routing_key == ladder.deliver_key(queue)
    envelope = Envelope.from_incoming(message)
    assert sent_id == envelope.message_id == "idem-42"
    assert envelope.type == "Reserve"
    assert envelope.queue == queue
    assert envelope.attempt == 1
    assert envelope.correlation_id == "c-7"
    # whole milliseconds, rounded up: never before the exact due time
    assert timedelta(0) <= envelope.due_at - due < timedelta(milliseconds=1)
    assert abs(envelope.timestamp - datetime.now(UTC)) < timedelta(seconds=5)
    assert envelope.extra_headers == {}
    assert kind.model_validate_json(envelope.body) == command


async def test_republished_copy_carries_no_broker_headers(
    publisher: Publisher, connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    queue = f"{prefix}.again"
    await cleanup.declare(connection, command_queue_topology(prefix, queue))
    # 4 s: the ladder carries 3 s (levels 1 and 0), the worker would hold the lead
    await publisher.send(command_for(queue)(n=1), LADDER_LEAD + timedelta(seconds=3))

    [first] = await collect(connection, queue, 1, timeout=8)
    headers = dict(first.message.headers or {})
    assert death_queues(headers) == [f"{prefix}.delay.0", f"{prefix}.delay.1"]
    assert "CC" in headers
    envelope = Envelope.from_incoming(first.message)
    assert not set(envelope.extra_headers) & BROKER_HEADERS

    # Overdue: straight through the deliver exchange, so no x-death at all.
    assert await publisher.publish_each([envelope]) == [None]
    [second] = await collect(connection, queue, 1, timeout=5)
    headers = dict(second.message.headers or {})
    assert not set(headers) & BROKER_HEADERS, headers
    assert second.message.message_id == first.message.message_id
    assert second.message.routing_key == ladder.deliver_key(queue)
    assert headers[DUE] == (first.message.headers or {})[DUE]
    assert headers[QUEUE] == queue

    # Due in a second after the lead: one fresh hop through level 0, nothing of the old path.
    later = dataclasses.replace(
        envelope.next_attempt(), due_at=datetime.now(UTC) + LADDER_LEAD + timedelta(seconds=1.2)
    )
    assert await publisher.publish_each([later]) == [None]
    [third] = await collect(connection, queue, 1, timeout=5)
    headers = dict(third.message.headers or {})
    assert death_queues(headers) == [f"{prefix}.delay.0"]
    assert deaths(headers)[0]["count"] == 1
    assert headers["CC"] == list(ladder.hop_keys(1, queue))
    assert headers[ATTEMPT] == 2


@pytest.mark.parametrize(
    ("properties", "headers", "reason", "detail"),
    # (A message without message_id cannot be made here: aiormq fills one in on publish.)
    [
        ({"message_id": "m"}, {DUE: 1, ATTEMPT: 1, QUEUE: "q"}, "missing-header", "type"),
        ({"message_id": "m", "type": "T"}, {ATTEMPT: 1, QUEUE: "q"}, "missing-header", DUE),
        ({"message_id": "m", "type": "T"}, {DUE: "soon", ATTEMPT: 1, QUEUE: "q"}, "invalid", DUE),
        ({"message_id": "m", "type": "T"}, {DUE: 1, ATTEMPT: 0, QUEUE: "q"}, "invalid", ATTEMPT),
        ({"message_id": "m", "type": "T"}, {DUE: 1, ATTEMPT: 1}, "missing-header", QUEUE),
    ],
)
async def test_from_incoming_rejects_incomplete_messages(
    connection: AbstractRobustConnection,
    cleanup: Cleanup,
    prefix: str,
    properties: dict[str, str],
    headers: dict[str, Any],
    reason: str,
    detail: str,
) -> None:
    queue = f"{prefix}.raw"
    await cleanup.declare(connection, Topology(queues=(QueueSpec(queue, quorum()),)))
    channel = await connection.channel()
    await channel.default_exchange.publish(
        aio_pika.Message(b"{}", headers={SCHEMA: 1, **headers}, **properties),  # type: ignore[arg-type]
        routing_key=queue,
    )
    await channel.close()
    [received] = await collect(connection, queue, 1, timeout=5)
    with pytest.raises(InvalidMessage) as caught:
        Envelope.from_incoming(received.message)
    assert caught.value.reason.startswith(reason)
    assert detail in caught.value.detail
