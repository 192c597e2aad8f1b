"""Context: follow-ups are queued envelopes with derived, repeatable ids; ``send`` aliases it."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from postdate._command import Command
from postdate._errors import DelayError
from postdate.consume._context import Context
from postdate.delay._routing import When
from postdate.publish._envelope import Envelope

DUE_AT = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
AT = datetime(2030, 6, 1, 8, 30, tzinfo=UTC)


class Charge(Command, queue="billing.charge"):
    amount: int


class Notify(Command, queue="mail.notify", name="mail.Notify"):
    to: str


def envelope(message_id: str = "m-1", correlation_id: str | None = "corr-1") -> Envelope:
    base = Envelope.for_command(
        Charge(amount=1), DUE_AT, message_id=message_id, correlation_id=correlation_id
    )
    return replace(base, attempt=3)


def context(message_id: str = "m-1", correlation_id: str | None = "corr-1") -> Context:
    return Context.for_envelope(envelope(message_id, correlation_id), structlog.get_logger())


def test_for_envelope() -> None:
    ctx = context()
    assert (ctx.message_id, ctx.type, ctx.queue, ctx.attempt) == (
        "m-1",
        "Charge",
        "billing.charge",
        3,
    )
    assert ctx.due_at == DUE_AT
    assert ctx.correlation_id == "corr-1"
    assert ctx.follow_ups == []


def test_follow_up_queues_an_envelope() -> None:
    ctx = context()
    message_id = ctx.follow_up(Notify(to="a@example.org"), 30)
    assert len(ctx.follow_ups) == 1
    queued = ctx.follow_ups[0]
    assert queued.message_id == message_id
    assert queued.type == "mail.Notify"
    assert queued.queue == "mail.notify"
    assert json.loads(queued.body) == {"to": "a@example.org"}
    assert queued.attempt == 1
    assert queued.extra_headers == {}


@pytest.mark.parametrize(
    ("delay", "span"),
    [
        pytest.param(None, timedelta(0), id="none-is-now"),
        pytest.param(0, timedelta(0), id="zero"),
        pytest.param(30, timedelta(seconds=30), id="int-seconds"),
        pytest.param(1.5, timedelta(seconds=1.5), id="float-seconds"),
        pytest.param(timedelta(minutes=5), timedelta(minutes=5), id="timedelta"),
        pytest.param(timedelta(days=30), timedelta(days=30), id="thirty-days"),
    ],
)
def test_follow_up_due_time_from_delay(delay: When | None, span: timedelta) -> None:
    ctx = context()
    before = datetime.now(UTC)
    ctx.follow_up(Charge(amount=2), delay)
    after = datetime.now(UTC)
    due = ctx.follow_ups[0].due_at
    assert before + span <= due <= after + span
    assert due.tzinfo is not None


@pytest.mark.parametrize(
    ("delay", "at"),
    [
        pytest.param(None, AT, id="at"),
        pytest.param(AT, None, id="datetime-as-delay"),
    ],
)
def test_follow_up_due_time_at(delay: When | None, at: datetime | None) -> None:
    ctx = context()
    ctx.follow_up(Charge(amount=2), delay, at=at)
    assert ctx.follow_ups[0].due_at == AT


@pytest.mark.parametrize(
    ("delay", "at", "match"),
    [
        pytest.param(-1, None, "negative", id="negative-int"),
        pytest.param(-0.001, None, "negative", id="negative-float"),
        pytest.param(timedelta(seconds=-1), None, "negative", id="negative-timedelta"),
        pytest.param(10, AT, "either delay= or at=", id="both"),
        pytest.param(None, datetime(2030, 1, 1), "naive", id="naive-at"),
        pytest.param(timedelta(days=3650), None, "maximum", id="beyond-the-ladder"),
    ],
)
def test_follow_up_refuses_unschedulable_delays(
    delay: When | None, at: datetime | None, match: str
) -> None:
    ctx = context()
    with pytest.raises(DelayError, match=match):
        ctx.follow_up(Charge(amount=2), delay, at=at)
    assert ctx.follow_ups == []


def test_follow_up_ids_repeat_for_the_same_message() -> None:
    first, redelivered = context(), context()
    commands: list[Command] = [Charge(amount=1), Notify(to="a"), Charge(amount=1)]
    ids = [first.follow_up(command, 10) for command in commands]
    again = [redelivered.follow_up(command, 10) for command in commands]
    assert ids == again
    assert len(set(ids)) == 3  # same command twice still gets two ids
    for message_id in ids:
        assert str(uuid.UUID(message_id)) == message_id


@pytest.mark.parametrize(
    ("other_message_id", "other_command"),
    [
        pytest.param("m-2", Charge(amount=1), id="other-message"),
        pytest.param("m-1", Notify(to="a"), id="other-command-type"),
    ],
)
def test_follow_up_ids_differ(other_message_id: str, other_command: Command) -> None:
    one = context("m-1").follow_up(Charge(amount=1))
    other = context(other_message_id).follow_up(other_command)
    assert one != other


def test_follow_up_id_does_not_depend_on_the_body_or_delay() -> None:
    one = context().follow_up(Charge(amount=1), 10)
    other = context().follow_up(Charge(amount=99), 20)
    assert one == other


def test_follow_up_explicit_message_id() -> None:
    ctx = context()
    assert ctx.follow_up(Charge(amount=1), message_id="order-7-charge") == "order-7-charge"
    assert ctx.follow_ups[0].message_id == "order-7-charge"
    derived = ctx.follow_up(Charge(amount=1))
    assert derived != "order-7-charge"
    assert derived != context().follow_up(Charge(amount=1))  # index 1, not 0


@pytest.mark.parametrize(
    ("correlation_id", "expected"),
    [
        pytest.param("corr-1", "corr-1", id="inherited"),
        pytest.param(None, "m-1", id="current-message-id"),
        pytest.param("", "m-1", id="empty-is-none"),
    ],
)
def test_follow_up_correlation_id(correlation_id: str | None, expected: str) -> None:
    ctx = context("m-1", correlation_id)
    ctx.follow_up(Charge(amount=1))
    ctx.follow_up(Notify(to="a"), 5)
    assert [queued.correlation_id for queued in ctx.follow_ups] == [expected, expected]


async def test_send_is_an_alias_that_queues() -> None:
    via_follow_up, via_send = context(), context()
    expected = via_follow_up.follow_up(Notify(to="a"), 60)
    before = datetime.now(UTC)
    message_id = await via_send.send(Notify(to="a"), 60)
    assert message_id == expected
    assert len(via_send.follow_ups) == 1
    sent, queued = via_send.follow_ups[0], via_follow_up.follow_ups[0]
    assert (sent.message_id, sent.type, sent.queue, sent.body, sent.correlation_id) == (
        queued.message_id,
        queued.type,
        queued.queue,
        queued.body,
        queued.correlation_id,
    )
    assert sent.due_at >= before + timedelta(seconds=60)


async def test_send_passes_at_and_message_id() -> None:
    ctx = context()
    assert await ctx.send(Charge(amount=1), at=AT, message_id="k-1") == "k-1"
    assert ctx.follow_ups[0].due_at == AT
    assert ctx.follow_ups[0].message_id == "k-1"


async def test_send_refuses_a_negative_delay() -> None:
    ctx = context()
    with pytest.raises(DelayError, match="negative"):
        await ctx.send(Charge(amount=1), -5)
    assert ctx.follow_ups == []
