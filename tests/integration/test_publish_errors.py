"""Typed errors from the publisher: bad delays, returns, an unreachable or refusing broker."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime, timedelta
from typing import Any

import aiormq
import pytest
import yarl
from aio_pika.abc import AbstractRobustConnection

from postdate._errors import (
    BrokerUnavailable,
    DelayError,
    PublisherNotStarted,
    PublishNacked,
    PublishReturned,
    PublishUnencodable,
)
from postdate._settings import Settings
from postdate.broker._topology import command_queue_topology
from postdate.delay._routing import LADDER_LEAD, When
from postdate.publish._publisher import Publisher
from tests.helpers import Cleanup, Ping, command_for, ladder_depths, queue_depth


async def test_unschedulable_delays_raise_and_publish_nothing(
    publisher: Publisher, connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    queue = f"{prefix}.orders"
    await cleanup.declare(connection, command_queue_topology(prefix, queue))
    command = command_for(queue)

    with pytest.raises(DelayError, match="maximum"):
        await publisher.send(command(n=1), timedelta(seconds=2**28))
    with pytest.raises(DelayError, match="naive"):
        await publisher.send(command(n=2), at=datetime(2031, 1, 1))
    with pytest.raises(DelayError, match="naive"):
        await publisher.send(command(n=3), datetime(2031, 1, 1))
    batch: list[tuple[Ping, When]] = [
        (command(n=4), 0),
        (command(n=5), timedelta(seconds=5)),
        (command(n=6), timedelta(days=365 * 9)),  # refused: nothing of the batch goes out
    ]
    with pytest.raises(DelayError, match="maximum"):
        await publisher.send_many(batch)

    depths = await ladder_depths(connection, prefix)
    depths[queue] = await queue_depth(connection, queue)
    assert set(depths.values()) == {0}, depths


async def test_publish_with_nowhere_to_go_is_returned(
    settings: Settings, cleanup: Cleanup, test_name: str, prefix: str
) -> None:
    delay = LADDER_LEAD + timedelta(seconds=5)  # the ladder carries 5 s: level 2
    async with Publisher(settings=settings, declare=False, connection_name=test_name) as pub:
        with pytest.raises(PublishReturned) as caught:
            await asyncio.wait_for(pub.send(command_for(f"{prefix}.q")(n=1), delay), timeout=10)
    assert caught.value.exchange == ""
    assert caught.value.routing_key == f"{prefix}.delay.2"
    assert "NO_ROUTE" in caught.value.reply_text
    assert "topology declare" in str(caught.value)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_broker_raises_broker_unavailable_after_retries() -> None:
    url = f"amqp://guest:secret@127.0.0.1:{closed_port()}/"
    settings = Settings.load(rabbitmq_url=url, connect_attempts=2, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="after 2 attempts") as caught:
        await asyncio.wait_for(Publisher(settings=settings).start(), timeout=10)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 5  # one backoff wait (0.2 s) between the two attempts
    assert "secret" not in str(caught.value)


async def test_refused_login_is_not_retried(rabbitmq: str) -> None:
    url = str(yarl.URL(rabbitmq).with_user("postdate-nobody").with_password("wrong"))
    settings = Settings.load(rabbitmq_url=url, connect_attempts=5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="not retried") as caught:
        await asyncio.wait_for(Publisher(settings=settings).start(), timeout=10)
    assert time.monotonic() - started < 1.5  # 5 attempts would back off for 3 s
    assert "wrong" not in str(caught.value)


async def test_missing_vhost_raises_broker_unavailable_naming_it(rabbitmq: str) -> None:
    url = str(yarl.URL(rabbitmq).with_path("/postdate-no-such-vhost"))
    settings = Settings.load(rabbitmq_url=url, connect_attempts=2)
    with pytest.raises(BrokerUnavailable, match="vhost"):
        await asyncio.wait_for(Publisher(settings=settings).start(), timeout=10)


async def test_send_after_close_says_the_publisher_is_not_started(publisher: Publisher) -> None:
    await publisher.close()
    with pytest.raises(PublisherNotStarted):
        await publisher.send(Ping(n=1))


async def test_a_message_that_cannot_be_encoded_fails_at_once_not_after_the_timeout(
    publisher: Publisher, cleanup: Cleanup, connection: AbstractRobustConnection, prefix: str
) -> None:
    queue = cleanup.track_queue(f"{prefix}.encoding")
    channel = await connection.channel()
    await channel.declare_queue(queue, durable=True)
    await channel.close()
    headers: dict[str, Any] = {"x": object()}  # no AMQP type encodes an object
    unencodable = aiormq.spec.Basic.Properties(message_id="m1", headers=headers)
    started = time.monotonic()
    with pytest.raises(PublishUnencodable, match="cannot be encoded"):
        await publisher.republish(b"{}", unencodable, queue)
    assert time.monotonic() - started < 2  # not retried until the 30 s publish timeout


async def test_a_nacked_publish_moves_publishing_to_a_new_channel(
    publisher: Publisher, connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    """After a nack the publisher goes on on a new channel (at most once a second): on
    RabbitMQ 3.10 a channel that reconnected during a quorum queue's leader election had
    every publish to that queue nacked until the old leader's node was back (the cluster
    test saw it). Here a full queue with reject-publish makes the nacks."""
    queue = cleanup.track_queue(f"{prefix}.full")
    channel = await connection.channel()
    full = {"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"}
    await channel.declare_queue(queue, durable=True, arguments=full)
    properties = aiormq.spec.Basic.Properties(message_id="m", delivery_mode=2)
    results = await publisher.republish_each([(b"%d" % n, properties, queue) for n in range(5)])
    nacked = [result for result in results if isinstance(result, PublishNacked)]
    assert nacked, "a full queue with reject-publish nacks"
    assert publisher.channel_renewals == 1
    with pytest.raises(PublishNacked):  # within a second of the first: no second channel
        await publisher.republish(b"again", properties, queue)
    assert publisher.channel_renewals == 1
    await (await channel.declare_queue(queue, passive=True)).purge()
    await publisher.republish(b"after", properties, queue)  # on the new channel
    assert await queue_depth(connection, queue) == 1
    await channel.close()
