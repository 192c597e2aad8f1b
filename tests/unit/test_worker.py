"""Worker.stop without a broker: running handlers get the grace period, one running past it
is cut off with its delivery left unacked, and nothing new is handled once stopping.

The worker is given a publisher (the in-memory one, so it opens and closes none) and is
never started: deliveries reach it through the consumer callback it hands to
``queue.consume`` (``Worker._delivery_callback(queue)``; private, the one seam these tests
need: see :func:`deliver`), each in a task of its own as aio-pika runs them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from postdate._command import Command
from postdate._outcomes import Outcome
from postdate._settings import Settings
from postdate.consume._consumer import Consumer
from postdate.consume._worker import Worker
from postdate.publish._envelope import Envelope
from tests.memory import Frame, MemoryChannel, MemoryHandler, MemoryMessage, MemoryPublisher

QUEUE = "postdate-tests.memory-worker"
GRACE = 5.0  # the settings' grace period: long, tests that must not wait it out assert < 1 s


class Tock(Command, queue=QUEUE):
    n: int


@pytest.fixture
def channel() -> Iterator[MemoryChannel]:
    channel = MemoryChannel()
    yield channel
    assert channel.error is None


@pytest.fixture
def handler() -> MemoryHandler:
    return MemoryHandler(gate=asyncio.Event())


@pytest.fixture
def shutdown() -> list[str]:
    """What the app's shutdown hook saw of the handler when it ran."""
    return []


@pytest.fixture
def worker(handler: MemoryHandler, shutdown: list[str]) -> Worker:
    app = Consumer()
    app.handler(Tock)(handler)

    @app.on_shutdown
    async def closing() -> None:
        shutdown.append(f"returned={len(handler.returned)} cancelled={len(handler.cancelled)}")

    settings = Settings(grace_period=GRACE, concurrency=4, metrics_port=None, schedule_url=None)
    return Worker(app, settings, name="memory-worker", publisher=MemoryPublisher().as_publisher())


def deliver(worker: Worker, message: MemoryMessage) -> asyncio.Task[None]:
    """Hand ``message`` to the worker's consumer callback of QUEUE, in a task of its own."""
    on_message = worker._delivery_callback(QUEUE)  # what start() hands to queue.consume

    async def consumed() -> None:
        await on_message(message.incoming())

    return asyncio.create_task(consumed())


def due_now(channel: MemoryChannel, n: int = 1, in_seconds: float = -1.0) -> MemoryMessage:
    """A delivery of ``Tock(n=n)`` on ``channel``, due ``in_seconds`` from now."""
    due_at = datetime.now(UTC) + timedelta(seconds=in_seconds)
    return MemoryMessage.of(channel, Envelope.for_command(Tock(n=n), due_at))


async def test_a_handler_running_at_stop_finishes_within_the_grace_period_and_is_acked(
    worker: Worker, handler: MemoryHandler, channel: MemoryChannel, shutdown: list[str]
) -> None:
    assert handler.gate is not None
    delivery = deliver(worker, due_now(channel))
    await handler.entered.wait()

    started = time.monotonic()
    stopping = asyncio.create_task(worker.stop(grace_period=GRACE))
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the handler
    assert shutdown == []  # hooks run only after it
    handler.gate.set()
    await stopping

    assert time.monotonic() - started < 1.0  # returned once the handler did, not at GRACE
    assert delivery.done() and not delivery.cancelled()
    assert handler.returned == [Tock(n=1)]
    assert channel.acked == {1}
    assert worker.outcomes == {Outcome.HANDLED: 1}
    assert shutdown == ["returned=1 cancelled=0"]


async def test_a_handler_running_past_the_grace_period_is_cut_off_its_delivery_unacked(
    worker: Worker, handler: MemoryHandler, channel: MemoryChannel, shutdown: list[str]
) -> None:
    delivery = deliver(worker, due_now(channel))
    await handler.entered.wait()

    started = time.monotonic()
    with structlog.testing.capture_logs() as logged:
        async with asyncio.timeout(2):  # a stop that ignored the grace period: fail, not hang
            await worker.stop(grace_period=0.1)
    took = time.monotonic() - started

    assert 0.1 <= took < 1.0
    assert delivery.cancelled()
    assert handler.cancelled == [Tock(n=1)] and handler.returned == []
    assert channel.frames == [] and channel.outstanding == {1}  # neither acked nor nacked
    assert worker.outcomes == {Outcome.ABANDONED: 1}
    [line] = [line for line in logged if line["event"] == "message"]
    assert (line["outcome"], line["reason"]) == ("abandoned", "cut off by the grace period")
    assert shutdown == ["returned=0 cancelled=1"]  # after the cut


async def test_a_delivery_arriving_while_the_worker_drains_is_neither_handled_nor_acked(
    worker: Worker, handler: MemoryHandler, channel: MemoryChannel
) -> None:
    assert handler.gate is not None
    deliver(worker, due_now(channel, n=1))
    await handler.entered.wait()
    stopping = asyncio.create_task(worker.stop(grace_period=GRACE))
    await asyncio.sleep(0)  # stop began: no more deliveries handled

    late = deliver(worker, due_now(channel, n=2))
    await late
    assert handler.calls == [Tock(n=1)]
    handler.gate.set()
    await stopping

    assert channel.acked == {1} and channel.outstanding == {2}
    assert worker.outcomes == {Outcome.HANDLED: 1}


async def test_a_delivery_held_until_due_at_stop_is_left_unacked_when_it_comes_due(
    worker: Worker, handler: MemoryHandler, channel: MemoryChannel
) -> None:
    delivery = deliver(worker, due_now(channel, in_seconds=0.2))
    await asyncio.sleep(0.01)
    assert not delivery.done() and handler.calls == []  # held

    started = time.monotonic()
    await worker.stop(grace_period=GRACE)

    assert time.monotonic() - started < 1.0  # over once it came due, not at GRACE
    assert handler.calls == []
    assert channel.frames == [] and channel.outstanding == {1}
    assert worker.outcomes == {Outcome.ABANDONED: 1}


async def test_a_failure_of_the_dispatcher_gives_the_delivery_back_and_the_worker_goes_on(
    worker: Worker, handler: MemoryHandler, channel: MemoryChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(message: object, queue: str) -> Outcome:
        raise RuntimeError("a bug in settling")

    monkeypatch.setattr(worker.dispatcher, "process", broken)
    with structlog.testing.capture_logs() as logged:
        await deliver(worker, due_now(channel))

    assert channel.frames == [Frame("nack", 1, False, True)]
    assert [line["event"] for line in logged] == ["worker.dispatch_failed"]
    monkeypatch.undo()
    assert handler.gate is not None
    handler.gate.set()
    await deliver(worker, due_now(channel, n=2))
    assert channel.acked == {2}
    await worker.stop(grace_period=0)
