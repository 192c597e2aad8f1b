"""Envelope.from_incoming without a broker: a delivery made as aiormq hands it over."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import aio_pika
import aiormq
import pytest
from aio_pika.abc import HeadersType
from pamqp import commands, header

from postdate._command import Command
from postdate.publish._envelope import Envelope

DUE_AT = datetime(2030, 5, 17, 8, 30, 15, 123_000, tzinfo=UTC)


class Tick(Command, queue="postdate-tests.tick"):
    n: int


def delivery(envelope: Envelope, extra_headers: HeadersType) -> aio_pika.IncomingMessage:
    properties = envelope.properties(cc=["0.1.postdate-tests.tick"])
    assert properties.headers is not None
    properties.headers.update(extra_headers)
    delivered = aiormq.abc.DeliveredMessage(
        delivery=commands.Basic.Deliver("tag", 1, False, "postdate.after.0", "q"),
        header=header.ContentHeader(0, len(envelope.body), properties),
        body=envelope.body,
        channel=None,  # type: ignore[arg-type]
    )
    return aio_pika.IncomingMessage(delivered)


def test_a_decoded_envelope_is_the_one_its_constructor_makes() -> None:
    sent = Envelope.for_command(Tick(n=7), DUE_AT, correlation_id="c-1")
    sent = sent.next_attempt(**{"x-trace": "abc"})
    broker: HeadersType = {"x-death": [{"count": 1}], "x-first-death-queue": "postdate.delay.0"}
    received = Envelope.from_incoming(delivery(sent, broker))
    expected = Envelope(
        message_id=sent.message_id,
        type="Tick",
        queue="postdate-tests.tick",
        body=sent.body,
        due_at=DUE_AT,
        attempt=2,
        correlation_id="c-1",
        timestamp=received.timestamp,
        extra_headers={"x-trace": "abc"},
    )
    assert received == expected
    assert type(received) is Envelope
    assert set(vars(received)) == {field.name for field in dataclasses.fields(Envelope)}
    assert received.timestamp.tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        received.attempt = 3  # type: ignore[misc]
