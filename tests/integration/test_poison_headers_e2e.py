"""A delivery whose headers pamqp decodes but cannot encode again (another client's long
string that is not UTF-8) is parked at once with its reason: its copy is not refused
until the broker's delivery limit parks it without one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Self

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection, HeadersType

from postdate import Consumer, Context, Outcome, Reason, RetryPolicy, Settings
from postdate._clock import to_epoch_ms
from postdate.broker._topology import poison_queue
from postdate.parking._poison import ATTEMPTS, ERROR_TYPE, ORIGIN_QUEUE, REASON
from postdate.publish._envelope import ATTEMPT, DUE, QUEUE, SCHEMA
from tests.helpers import (
    Cleanup,
    Ping,
    StartWorker,
    WorkerStarter,
    collect,
    command_for,
    queue_depth,
)


class Permanent(Exception):
    pass


class Foreign(str):
    """A header value pamqp writes as a long string of exactly ``raw``, UTF-8 or not: what
    a client in another language may send (pamqp itself only writes valid UTF-8)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> Self:
        text = super().__new__(cls, raw.decode("latin-1"))
        text.raw = raw
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


ODD: HeadersType = {
    "x-foreign": Foreign(b"\xff\xfe id-7"),
    "x-nested": {"k": Foreign(b"\xc3\x28"), "list": [Foreign(b"\x80"), 1]},
    "x-plain": "kept",
}


@pytest.fixture
async def start_worker(
    rabbitmq: str, prefix: str, cleanup: Cleanup, test_name: str
) -> AsyncIterator[StartWorker]:
    """Starts workers whose copies time out after 3 s (the default 30 s would only make
    the old failure slower to see)."""
    settings = Settings.load(
        prefix=prefix, rabbitmq_url=rabbitmq, connect_attempts=3, publish_timeout=3
    )
    starter = WorkerStarter(settings, cleanup, test_name)
    yield starter.start
    await starter.stop_all()


async def test_the_consumer_gets_such_a_header_as_bytes(
    prefix: str, connection: AbstractRobustConnection, cleanup: Cleanup
) -> None:
    channel = await connection.channel()
    queue = await channel.declare_queue(cleanup.track_queue(f"{prefix}.raw"), durable=True)
    await channel.default_exchange.publish(aio_pika.Message(b"{}", headers=ODD), queue.name)
    message = await queue.get(timeout=5)
    await message.ack()
    headers = message.headers
    assert headers["x-foreign"] == b"\xff\xfe id-7"
    assert type(headers["x-foreign"]) is bytes  # what pamqp cannot encode again
    assert headers["x-nested"] == {"k": b"\xc3\x28", "list": [b"\x80", 1]}


ONE_SECOND = (timedelta(seconds=1),)


@pytest.mark.parametrize(
    ("kind", "error", "policy", "runs", "reason"),
    [
        pytest.param("NoSuchCommand", None, None, 0, Reason.UNKNOWN_TYPE, id="unknown-type"),
        pytest.param(
            "Ping",
            Permanent("bad state"),
            RetryPolicy(max_attempts=5, tiers=ONE_SECOND, permanent=(Permanent,)),
            1,
            Reason.PERMANENT,
            id="permanent-error",
        ),
        pytest.param(
            "Ping",
            RuntimeError("boom"),
            RetryPolicy(max_attempts=2, tiers=ONE_SECOND),
            2,
            Reason.EXHAUSTED,
            id="retried-then-exhausted",
        ),
    ],
)
async def test_odd_headers_are_parked_once_with_their_reason(
    prefix: str,
    start_worker: StartWorker,
    connection: AbstractRobustConnection,
    kind: str,
    error: Exception | None,
    policy: RetryPolicy | None,
    runs: int,
    reason: Reason,
) -> None:
    cmd = command_for(f"{prefix}.odd")
    app = Consumer()
    attempts: list[int] = []

    @app.handler(cmd, retries=policy)
    async def handle(command: Ping, context: Context) -> None:
        attempts.append(context.attempt)
        if error is not None:
            raise error

    worker = await start_worker(app)
    headers: HeadersType = {
        DUE: to_epoch_ms(datetime.now(UTC)),
        ATTEMPT: 1,
        SCHEMA: 1,
        QUEUE: cmd.queue,
        **ODD,
    }
    channel = await connection.channel()
    message = aio_pika.Message(
        b'{"n":1}',
        headers=headers,
        type=kind,
        message_id="odd-1",
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await channel.default_exchange.publish(message, cmd.queue)

    [parked] = await collect(connection, poison_queue(cmd.queue), 1, timeout=15)
    carried = parked.message.headers
    assert carried[REASON] == reason
    assert carried[ERROR_TYPE] == (type(error).__name__ if error else "InvalidMessage")
    assert carried[ATTEMPTS] == max(runs, 1)
    assert carried[ORIGIN_QUEUE] == cmd.queue
    assert "x-death" not in carried  # parked by the worker, not by the delivery limit
    assert carried["x-foreign"] == b"\xff\xfe id-7"  # the same bytes (as a byte array)
    assert carried["x-nested"] == {"k": b"\xc3\x28", "list": [b"\x80", 1]}
    assert carried["x-plain"] == "kept"
    assert parked.message.message_id == "odd-1"
    assert parked.message.body == b'{"n":1}'
    await asyncio.sleep(0.5)  # time for a redelivery, had it been given back
    assert attempts == list(range(1, runs + 1))
    assert worker.outcomes[Outcome.POISONED] == 1
    assert worker.outcomes[Outcome.ABANDONED] == 0
    assert await queue_depth(connection, poison_queue(cmd.queue)) == 0
    assert await queue_depth(connection, cmd.queue) == 0
