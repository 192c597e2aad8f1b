"""Dispatcher.process without a broker: hold, handle, and settle each delivery, in the order
reliability rule 2 asks (a copy confirmed before its delivery is acked), on the in-memory
channel and publisher of tests/memory.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from aio_pika.abc import HeadersType

from postdate._clock import to_epoch_ms
from postdate._command import Command
from postdate._errors import (
    PostdateError,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
)
from postdate._outcomes import Outcome, Reason, Skip
from postdate.broker._topology import poison_queue, retry_queue
from postdate.consume import _dispatch
from postdate.consume._consumer import Consumer
from postdate.consume._dispatch import ACK_LOST, HOLD_LIMIT_SECONDS, Dispatcher
from postdate.consume._retry import RetryPolicy
from postdate.consume._settle import LAST_ERROR
from postdate.parking._poison import ATTEMPTS, ERROR_MESSAGE, ERROR_TYPE, ORIGIN_QUEUE, REASON
from postdate.publish._envelope import ATTEMPT, DUE, PERSISTENT, Envelope
from tests.memory import Frame, MemoryChannel, MemoryHandler, MemoryMessage, MemoryPublisher

QUEUE = "postdate-tests.memory"
RETRY_10S = f"{QUEUE}.retry.10s"
POISON = f"{QUEUE}.poison"


class Tick(Command, queue=QUEUE):
    n: int


class Follow(Command, queue="postdate-tests.memory-follow"):
    n: int


class Declined(Exception):
    """A permanent error for the handler's policy."""


@pytest.fixture
def journal() -> list[str]:
    return []


@pytest.fixture
def channel(journal: list[str]) -> Iterator[MemoryChannel]:
    channel = MemoryChannel(journal)
    yield channel
    assert channel.error is None  # never settled a tag twice, nor one it did not deliver


@pytest.fixture
def publisher(journal: list[str]) -> MemoryPublisher:
    return MemoryPublisher(journal)


@pytest.fixture
def handler() -> MemoryHandler:
    return MemoryHandler()


POLICY = RetryPolicy(max_attempts=3, permanent=(Declined,))


def dispatcher_for(
    publisher: MemoryPublisher, handler: MemoryHandler, slots: asyncio.Semaphore | None = None
) -> Dispatcher:
    app = Consumer()
    app.handler(Tick, retries=POLICY)(handler)
    return Dispatcher(app, publisher.as_publisher(), handler_slots=slots)


def envelope_due(in_seconds: float = -1.0, n: int = 1, attempt: int = 1) -> Envelope:
    envelope = Envelope.for_command(
        Tick(n=n), datetime.now(UTC) + timedelta(seconds=in_seconds), correlation_id="corr-1"
    )
    for _ in range(attempt - 1):
        envelope = envelope.next_attempt()
    return envelope


async def test_a_due_delivery_is_handled_then_acked(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler, journal: list[str]
) -> None:
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due(n=7))

    outcome = await dispatcher.process(message.incoming(), QUEUE)

    assert outcome is Outcome.HANDLED
    assert handler.calls == [Tick(n=7)]
    assert channel.acked == {1} and channel.outstanding == set()
    assert journal == ["ack 1"]
    assert (publisher.republished, publisher.published) == ([], [])
    assert dispatcher.outcomes == {Outcome.HANDLED: 1}


# --- holding until due ------------------------------------------------------------------


async def test_a_delivery_due_soon_is_held_and_handled_no_earlier_than_its_due_time(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler
) -> None:
    dispatcher = dispatcher_for(publisher, handler)
    envelope = envelope_due(in_seconds=0.3)
    due_at = datetime.fromtimestamp(to_epoch_ms(envelope.due_at) / 1000, UTC)  # as carried
    message = MemoryMessage.of(channel, envelope)
    started = time.monotonic()

    task = asyncio.create_task(dispatcher.process(message.incoming(), QUEUE))
    await asyncio.sleep(0.15)
    assert handler.calls == []  # still held
    assert channel.outstanding == {1}  # and neither acked nor given back
    outcome = await task

    assert outcome is Outcome.HANDLED
    assert handler.called_at[0] >= due_at
    assert time.monotonic() - started >= 0.25
    assert channel.acked == {1}


async def test_a_delivery_over_the_hold_limit_is_rescheduled_and_acked_never_handled(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler, journal: list[str]
) -> None:
    dispatcher = dispatcher_for(publisher, handler)
    envelope = envelope_due(in_seconds=HOLD_LIMIT_SECONDS + 5)
    message = MemoryMessage.of(channel, envelope, headers={"x-death": [{"count": 1}]})
    started = time.monotonic()

    async with asyncio.timeout(2):  # one held instead would take HOLD_LIMIT_SECONDS and more
        outcome = await dispatcher.process(message.incoming(), QUEUE)

    assert outcome is Outcome.RESCHEDULED
    assert time.monotonic() - started < 1.0  # not held
    assert handler.calls == []
    [sent] = publisher.published
    assert sent.declare_queues is False
    [again] = sent.envelopes
    assert (again.message_id, again.queue, again.attempt) == (envelope.message_id, QUEUE, 1)
    assert to_epoch_ms(again.due_at) == to_epoch_ms(envelope.due_at)  # the same due time
    assert "x-death" not in again.headers()  # broker headers stay behind
    assert journal == [f"publish {QUEUE}", "confirmed", "ack 1"]


async def test_the_hold_limit_is_what_separates_holding_from_rescheduling(
    channel: MemoryChannel,
    publisher: MemoryPublisher,
    handler: MemoryHandler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_dispatch, "HOLD_LIMIT_SECONDS", 0.5)
    dispatcher = dispatcher_for(publisher, handler)
    soon = MemoryMessage.of(channel, envelope_due(in_seconds=0.1, n=1))
    later = MemoryMessage.of(channel, envelope_due(in_seconds=0.9, n=2))

    outcomes = await asyncio.gather(
        dispatcher.process(soon.incoming(), QUEUE), dispatcher.process(later.incoming(), QUEUE)
    )

    assert list(outcomes) == [Outcome.HANDLED, Outcome.RESCHEDULED]
    assert handler.calls == [Tick(n=1)]
    assert [p.envelopes[0].message_id for p in publisher.published] == [later.message_id]
    assert channel.acked == {1, 2}


# --- retry and poison ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "tier"), [(1, timedelta(seconds=10)), (2, timedelta(minutes=1))]
)
async def test_a_failed_handler_sends_a_copy_to_its_retry_tier_then_acks(
    channel: MemoryChannel,
    publisher: MemoryPublisher,
    handler: MemoryHandler,
    journal: list[str],
    attempt: int,
    tier: timedelta,
) -> None:
    handler.raises = RuntimeError("boom")
    dispatcher = dispatcher_for(publisher, handler)
    envelope = envelope_due(attempt=attempt)
    broker_headers: HeadersType = {"x-death": [{"count": 1}], "x-first-death-queue": RETRY_10S}
    message = MemoryMessage.of(channel, envelope, headers=broker_headers)

    outcome = await dispatcher.process(message.incoming(), QUEUE)

    assert outcome is Outcome.RETRIED
    assert handler.calls == [Tick(n=1)]
    [copy] = publisher.republished
    assert copy.queue == retry_queue(QUEUE, tier)
    assert attempt > 1 or copy.queue == RETRY_10S
    assert copy.headers[ATTEMPT] == attempt + 1
    assert "boom" in str(copy.headers[LAST_ERROR])
    assert copy.headers[DUE] == to_epoch_ms(envelope.due_at)
    assert not {"x-death", "x-first-death-queue"} & set(copy.headers)
    assert copy.body == envelope.body
    assert copy.properties.message_id == envelope.message_id
    assert copy.properties.delivery_mode == PERSISTENT
    assert journal == [f"republish {copy.queue}", "confirmed", "ack 1"]
    assert channel.acked == {1}


async def test_the_last_attempt_parks_a_copy_in_the_poison_queue_with_its_reason(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler, journal: list[str]
) -> None:
    handler.raises = RuntimeError("still broken")
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due(attempt=POLICY.max_attempts))

    outcome = await dispatcher.process(message.incoming(), QUEUE)

    assert outcome is Outcome.POISONED
    [copy] = publisher.republished
    assert copy.queue == poison_queue(QUEUE) == POISON
    assert copy.headers[REASON] == "attempts-exhausted"
    assert copy.headers[ERROR_TYPE] == "RuntimeError"
    assert copy.headers[ERROR_MESSAGE] == "still broken"
    assert copy.headers[ATTEMPTS] == POLICY.max_attempts
    assert copy.headers[ORIGIN_QUEUE] == QUEUE
    assert journal == [f"republish {POISON}", "confirmed", "ack 1"]


async def test_a_permanent_error_is_poisoned_on_the_first_attempt(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler
) -> None:
    handler.raises = Declined("card declined")
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due())

    assert await dispatcher.process(message.incoming(), QUEUE) is Outcome.POISONED
    [copy] = publisher.republished
    assert (copy.queue, copy.headers[REASON]) == (POISON, Reason.PERMANENT)
    assert channel.acked == {1}


def _retype(message: MemoryMessage) -> None:
    message.type = "NoSuchCommand"


def _no_due(message: MemoryMessage) -> None:
    del message.headers[DUE]


def _bad_json(message: MemoryMessage) -> None:
    message.body = b'{"n": 1'


def _bad_schema(message: MemoryMessage) -> None:
    message.body = b'{"n": "one"}'


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_bad_json, Reason.INVALID_JSON),
        (_retype, Reason.UNKNOWN_TYPE),
        (_bad_schema, Reason.SCHEMA),
        (_no_due, Reason.MISSING_HEADER),
    ],
)
async def test_an_undecodable_delivery_is_poisoned_at_once_with_its_reason(
    channel: MemoryChannel,
    publisher: MemoryPublisher,
    handler: MemoryHandler,
    journal: list[str],
    spoil: Callable[[MemoryMessage], None],
    reason: Reason,
) -> None:
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due())
    spoil(message)

    outcome = await dispatcher.process(message.incoming(), QUEUE)

    assert outcome is Outcome.POISONED
    assert handler.calls == []
    [copy] = publisher.republished
    assert copy.queue == POISON
    assert copy.headers[REASON] == reason
    assert copy.headers[ATTEMPTS] == 1
    assert copy.headers[ORIGIN_QUEUE] == QUEUE
    assert copy.body == message.body  # parked as it came
    assert journal == [f"republish {POISON}", "confirmed", "ack 1"]


async def test_skip_acks_with_the_outcome_skipped(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler, journal: list[str]
) -> None:
    handler.raises = Skip("nothing to do")
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due())

    assert await dispatcher.process(message.incoming(), QUEUE) is Outcome.SKIPPED
    assert handler.calls == [Tick(n=1)]
    assert (publisher.republished, publisher.published) == ([], [])
    assert journal == ["ack 1"]
    assert dispatcher.outcomes == {Outcome.SKIPPED: 1}


async def test_follow_ups_are_confirmed_before_the_ack_and_never_declare_a_queue(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler, journal: list[str]
) -> None:
    handler.follow_ups = [Follow(n=2)]
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due())

    assert await dispatcher.process(message.incoming(), QUEUE) is Outcome.HANDLED
    [sent] = publisher.published
    assert sent.declare_queues is False
    assert [e.queue for e in sent.envelopes] == [Follow.queue]
    assert sent.envelopes[0].correlation_id == "corr-1"
    assert journal == [f"publish {Follow.queue}", "confirmed", "ack 1"]


# --- acks only after confirms ---------------------------------------------------------------


async def test_the_delivery_is_not_acked_while_its_retry_copy_awaits_its_confirm(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler, journal: list[str]
) -> None:
    handler.raises = RuntimeError("boom")
    publisher.hold()
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due())

    task = asyncio.create_task(dispatcher.process(message.incoming(), QUEUE))
    await publisher.waiting.wait()
    for _ in range(5):  # whatever the dispatcher would do meanwhile, let it
        await asyncio.sleep(0)
    assert [copy.queue for copy in publisher.republished] == [RETRY_10S]
    assert channel.frames == [] and channel.outstanding == {1}
    assert not task.done()

    publisher.release()
    assert await task is Outcome.RETRIED
    assert journal == [f"republish {RETRY_10S}", "confirmed", "ack 1"]


def _failing_handler(handler: MemoryHandler) -> None:
    handler.raises = RuntimeError("boom")


def _undecodable(message: MemoryMessage) -> None:
    message.body = b"not json"


@pytest.mark.parametrize("failure", [PublishNacked("nacked"), PublishTimeout("no confirm")])
@pytest.mark.parametrize(
    ("scenario", "copied_to"),
    [("retry", RETRY_10S), ("poison", POISON), ("reschedule", QUEUE)],
)
async def test_a_copy_not_confirmed_gives_the_delivery_back_never_acks_it(
    channel: MemoryChannel,
    publisher: MemoryPublisher,
    handler: MemoryHandler,
    journal: list[str],
    failure: PostdateError,
    scenario: str,
    copied_to: str,
) -> None:
    publisher.hold()
    dispatcher = dispatcher_for(publisher, handler)
    in_seconds = HOLD_LIMIT_SECONDS + 5 if scenario == "reschedule" else -1.0
    message = MemoryMessage.of(channel, envelope_due(in_seconds=in_seconds))
    if scenario == "retry":
        _failing_handler(handler)
    elif scenario == "poison":
        _undecodable(message)

    task = asyncio.create_task(dispatcher.process(message.incoming(), QUEUE))
    await publisher.waiting.wait()
    assert channel.frames == []
    publisher.release(failure)
    outcome = await task

    assert outcome is Outcome.ABANDONED
    assert channel.frames == [Frame("nack", 1, False, True)]
    assert channel.acked == set() and channel.given_back == {1}
    verb = "publish" if scenario == "reschedule" else "republish"
    assert journal == [f"{verb} {copied_to}", f"failed {type(failure).__name__}", "nack 1 requeue"]
    assert dispatcher.outcomes == {Outcome.ABANDONED: 1}


async def test_a_retry_tier_that_does_not_exist_parks_the_delivery_instead(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler, journal: list[str]
) -> None:
    handler.raises = RuntimeError("boom")
    publisher.failures = [PublishReturned("", RETRY_10S, "NO_ROUTE")]
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due())

    assert await dispatcher.process(message.incoming(), QUEUE) is Outcome.POISONED
    assert [copy.queue for copy in publisher.republished] == [RETRY_10S, POISON]
    assert publisher.republished[1].headers[REASON] == Reason.RETRY_UNAVAILABLE
    assert journal[-1] == "ack 1" and channel.acked == {1}


# --- coalesced acks -------------------------------------------------------------------------


async def test_deliveries_settled_together_are_acked_by_one_multiple_ack(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler
) -> None:
    dispatcher = dispatcher_for(publisher, handler)
    messages = [MemoryMessage.of(channel, envelope_due(n=n)) for n in (1, 2, 3)]

    outcomes = await asyncio.gather(*(dispatcher.process(m.incoming(), QUEUE) for m in messages))

    assert outcomes == [Outcome.HANDLED] * 3
    assert channel.frames == [Frame("ack", 3, multiple=True)]
    assert channel.acked == {1, 2, 3}


async def test_a_multiple_ack_never_covers_a_delivery_still_in_its_handler(
    channel: MemoryChannel, publisher: MemoryPublisher
) -> None:
    gate = asyncio.Event()
    slow = MemoryHandler(gate=gate)
    dispatcher = dispatcher_for(publisher, slow)
    first = MemoryMessage.of(channel, envelope_due(n=1))
    running = asyncio.create_task(dispatcher.process(first.incoming(), QUEUE))
    await slow.entered.wait()
    slow.gate = None  # the next ones return at once
    rest = [MemoryMessage.of(channel, envelope_due(n=n)) for n in (2, 3)]

    await asyncio.gather(*(dispatcher.process(m.incoming(), QUEUE) for m in rest))
    assert channel.acked == {2, 3} and channel.outstanding == {1}
    assert all(not frame.multiple for frame in channel.frames)

    gate.set()
    assert await running is Outcome.HANDLED
    assert channel.acked == {1, 2, 3}
    assert channel.frames[-1] == Frame("ack", 1, multiple=False)


async def test_a_delivery_whose_channel_closed_meanwhile_is_abandoned_not_acked(
    channel: MemoryChannel, publisher: MemoryPublisher
) -> None:
    gate = asyncio.Event()
    slow = MemoryHandler(gate=gate)
    dispatcher = dispatcher_for(publisher, slow)
    message = MemoryMessage.of(channel, envelope_due())
    task = asyncio.create_task(dispatcher.process(message.incoming(), QUEUE))
    await slow.entered.wait()

    channel.close()
    with structlog.testing.capture_logs() as logged:
        gate.set()
        assert await task is Outcome.ABANDONED

    assert slow.returned == [Tick(n=1)]
    assert channel.frames == []
    assert dispatcher.outcomes == {Outcome.ABANDONED: 1}
    [line] = [line for line in logged if line["event"] == "message"]
    assert (line["outcome"], line["reason"]) == ("abandoned", ACK_LOST)


# --- stopping ------------------------------------------------------------------------------


async def test_once_stopping_a_delivery_not_yet_in_a_handler_is_left_unacked(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler
) -> None:
    dispatcher = dispatcher_for(publisher, handler)
    dispatcher.stopping.set()
    message = MemoryMessage.of(channel, envelope_due())

    with structlog.testing.capture_logs() as logged:
        assert await dispatcher.process(message.incoming(), QUEUE) is Outcome.ABANDONED

    assert [(line["outcome"], line["reason"]) for line in logged] == [
        ("abandoned", "worker stopping")
    ]
    assert handler.calls == []
    assert channel.frames == [] and channel.outstanding == {1}
    assert (publisher.republished, publisher.published) == ([], [])


async def test_a_delivery_waiting_for_a_handler_slot_when_stopping_begins_is_left_unacked(
    channel: MemoryChannel, publisher: MemoryPublisher
) -> None:
    gate = asyncio.Event()
    slow = MemoryHandler(gate=gate)
    dispatcher = dispatcher_for(publisher, slow, slots=asyncio.Semaphore(1))
    first = MemoryMessage.of(channel, envelope_due(n=1))
    second = MemoryMessage.of(channel, envelope_due(n=2))
    running = asyncio.create_task(dispatcher.process(first.incoming(), QUEUE))
    await slow.entered.wait()
    waiting = asyncio.create_task(dispatcher.process(second.incoming(), QUEUE))
    await asyncio.sleep(0.01)
    assert slow.calls == [Tick(n=1)]  # the second waits for the only slot

    dispatcher.stopping.set()
    gate.set()

    assert await running is Outcome.HANDLED  # already in its handler: finishes
    assert await waiting is Outcome.ABANDONED
    assert slow.calls == [Tick(n=1)]
    assert channel.acked == {1} and channel.outstanding == {2}


async def test_a_delivery_held_until_due_when_stopping_begins_is_left_unacked(
    channel: MemoryChannel, publisher: MemoryPublisher, handler: MemoryHandler
) -> None:
    dispatcher = dispatcher_for(publisher, handler)
    message = MemoryMessage.of(channel, envelope_due(in_seconds=0.2))
    task = asyncio.create_task(dispatcher.process(message.incoming(), QUEUE))
    await asyncio.sleep(0.01)
    assert not task.done() and handler.calls == []  # it is being held

    dispatcher.stopping.set()

    assert await task is Outcome.ABANDONED
    assert handler.calls == []
    assert channel.frames == [] and channel.outstanding == {1}
