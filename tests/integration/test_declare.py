"""Declaring topology on a real broker: idempotent, and typed errors for mismatches."""

from __future__ import annotations

from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection

from postdate._errors import TopologyMismatch
from postdate._settings import Settings
from postdate.broker._declare import declare_topology
from postdate.broker._topology import command_queue_topology, ladder_topology
from postdate.publish._publisher import Publisher
from tests.helpers import Cleanup, queue_depth


async def declare_raw_queue(
    connection: AbstractRobustConnection, name: str, arguments: dict[str, Any]
) -> None:
    channel = await connection.channel(publisher_confirms=False)
    underlay = await channel.get_underlay_channel()
    await underlay.queue_declare(name, durable=True, arguments=arguments)
    await channel.close()


async def test_declaring_twice_is_harmless(
    connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    topology = ladder_topology(prefix) + command_queue_topology(prefix, f"{prefix}.orders")
    await cleanup.declare(connection, topology)
    await declare_topology(connection, topology)
    assert await queue_depth(connection, f"{prefix}.delay.27") == 0
    assert await queue_depth(connection, f"{prefix}.orders.retry.1m") == 0


async def test_existing_queue_with_other_arguments_names_every_difference(
    connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    queue = cleanup.track_queue(f"{prefix}.orders")
    await declare_raw_queue(connection, queue, {"x-queue-type": "quorum", "x-delivery-limit": 3})

    with pytest.raises(TopologyMismatch) as caught:
        await cleanup.declare(connection, command_queue_topology(prefix, queue))

    error = caught.value
    assert error.name == queue
    assert error.differences == {
        "x-delivery-limit": (5, 3),
        "x-dead-letter-exchange": ("", None),
        "x-dead-letter-routing-key": (f"{queue}.poison", None),
        "x-dead-letter-strategy": ("at-least-once", None),
        "x-overflow": ("reject-publish", None),
    }
    message = str(error)
    assert repr(queue) in message
    for argument in error.differences:
        assert argument in message
    # A typed error, not a broken connection or a reconnect loop.
    assert not connection.is_closed
    assert await queue_depth(connection, queue) == 0


async def test_classic_queue_where_a_quorum_queue_belongs(
    connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    queue = cleanup.track_queue(f"{prefix}.classic")
    await declare_raw_queue(connection, queue, {"x-message-ttl": 5000})

    with pytest.raises(TopologyMismatch) as caught:
        await cleanup.declare(connection, command_queue_topology(prefix, queue))

    differences = caught.value.differences
    assert differences["x-queue-type"] == ("quorum", None)
    assert differences["x-message-ttl"] == (None, 5000)


async def test_publisher_start_reports_a_mismatched_ladder_level(
    connection: AbstractRobustConnection, cleanup: Cleanup, settings: Settings, prefix: str
) -> None:
    level = ladder_topology(prefix).queues[4]  # unroutable is first: this is delay.3
    assert level.name == f"{prefix}.delay.3"
    await declare_raw_queue(connection, level.name, {**level.arguments, "x-message-ttl": 1234})

    with pytest.raises(TopologyMismatch) as caught:
        async with Publisher(settings=settings, connection_name="mismatch test"):
            pass

    assert caught.value.name == level.name
    assert caught.value.differences == {"x-message-ttl": (8000, 1234)}


async def test_existing_exchange_of_another_type(
    connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    deliver = f"{prefix}.deliver"
    channel = await connection.channel(publisher_confirms=False)
    underlay = await channel.get_underlay_channel()
    await underlay.exchange_declare(deliver, exchange_type="direct", durable=True)
    await channel.close()

    with pytest.raises(TopologyMismatch) as caught:
        await declare_topology(connection, ladder_topology(prefix))

    assert caught.value.name == deliver
    assert caught.value.differences["type"] == ("topic", "direct")
