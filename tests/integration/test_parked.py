"""Runs on a parked queue (postdate.parking._parked): what one run reads, another sees whole."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from postdate.broker._topology import QueueSpec, Topology, parking
from postdate.parking._parked import Copy, delete_parked, move_parked, read_parked
from postdate.publish._publisher import Publisher
from tests.helpers import Cleanup, queue_depth

PARKED = 300


async def parked_queue(connection: AbstractRobustConnection, cleanup: Cleanup, name: str) -> str:
    await cleanup.declare(connection, Topology(queues=(QueueSpec(name, parking()),)))
    channel = await connection.channel(publisher_confirms=True)
    for n in range(PARKED):
        message = aio_pika.Message(str(n).encode(), message_id=f"m{n}")
        await channel.default_exchange.publish(message, routing_key=name)
    await channel.close()
    return name


async def test_two_runs_on_one_connection_each_read_every_message(
    connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    queue = await parked_queue(connection, cleanup, f"{prefix}.parked")
    both = await asyncio.gather(*(read_parked(connection, queue) for _ in "ab"))
    assert [(len(messages), depth) for messages, depth in both] == [(PARKED, PARKED)] * 2


async def test_a_run_right_after_another_counts_what_the_first_gave_back(
    connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str, publisher: Publisher
) -> None:
    queue = await parked_queue(connection, cleanup, f"{prefix}.parked")
    target = cleanup.track_queue(f"{prefix}.target")
    channel = await connection.channel()
    await channel.declare_queue(target, durable=True)
    await channel.close()

    async def everything(message: AbstractIncomingMessage) -> Copy:
        return Copy(message.body, message.properties, target)

    for _ in range(3):  # the first run's unacked messages are back before the next counts
        messages, depth = await read_parked(connection, queue)
        assert (len(messages), depth) == (PARKED, PARKED)
    tally = await move_parked(connection, queue, publisher, everything)
    assert (tally.parked, len(tally.moved), tally.complete) == (PARKED, PARKED, True)
    assert await queue_depth(connection, target) == PARKED
    assert (await delete_parked(connection, target, lambda _: True)).matched == PARKED
