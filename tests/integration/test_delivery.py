"""Delays through the real broker: ordering by due time, bulk delivery, missing queues.

The behaviour tests run on both backends (``backend`` parametrized): the ladder here, the
delayed-message plugin where ``POSTDATE_PLUGIN_URL`` names a broker that has it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import timedelta

import pytest
from aio_pika.abc import AbstractRobustConnection

from postdate.broker._topology import Names, command_queue_topology
from postdate.delay._routing import LADDER_LEAD, When
from postdate.publish._envelope import DUE, QUEUE
from postdate.publish._publisher import Publisher
from tests.helpers import (
    BACKENDS,
    Cleanup,
    Collector,
    Ping,
    Received,
    command_for,
    queue_depth,
    send_around_the_publisher,
)

# How late a delivery may be and still count as "on time" in these tests: the
# ladder rounds down to whole seconds (the consumer holds the rest) and each hop costs a
# few milliseconds; a jammed level would be late by many seconds or never arrive.
ON_TIME_MS = 1500
# How early the ladder may deliver onto the command queue: its lead (the worker holds
# that), plus the sub-second remainder it does not carry.
EARLIEST_MS = LADDER_LEAD // timedelta(milliseconds=1) + 1000


def due_ms(received: Received) -> int:
    value = (received.message.headers or {})[DUE]
    assert isinstance(value, int)
    return value


async def declare_queues(
    connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str, *queues: str
) -> None:
    for queue in queues:
        await cleanup.declare(connection, command_queue_topology(prefix, queue))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_later_command_published_first_does_not_block_an_earlier_one(
    publisher: Publisher, connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    queue = f"{prefix}.hol"
    await declare_queues(connection, cleanup, prefix, queue)
    command = command_for(queue)
    async with Collector(connection, queue, 2) as collector:
        late = await publisher.send(command(n=10), timedelta(seconds=10))
        early = await publisher.send(command(n=1), timedelta(seconds=1))
        received = await collector.wait(timeout=16)

    assert [r.message.message_id for r in received] == [early, late]
    first, second = received
    assert due_ms(first) - EARLIEST_MS <= first.arrived_ms <= due_ms(first) + ON_TIME_MS
    assert due_ms(second) - EARLIEST_MS <= second.arrived_ms <= due_ms(second) + ON_TIME_MS


@pytest.mark.parametrize("backend", BACKENDS)
async def test_many_commands_arrive_once_on_their_queue_never_early(
    publisher: Publisher,
    connection: AbstractRobustConnection,
    cleanup: Cleanup,
    prefix: str,
    record_property: Callable[[str, object], None],
) -> None:
    total = 1200
    queues = [f"{prefix}.alpha", f"{prefix}.beta", f"{prefix}.gamma"]
    await declare_queues(connection, cleanup, prefix, *queues)
    kinds = {queue: command_for(queue, f"Kind{index}") for index, queue in enumerate(queues)}
    rng = random.Random()
    delays = [rng.uniform(1.0, 30.0) for _ in range(total)]
    targets = [queues[index % len(queues)] for index in range(total)]
    items: list[tuple[Ping, When]] = [
        (kinds[targets[n]](n=n), timedelta(seconds=delays[n])) for n in range(total)
    ]
    rng.shuffle(items)
    per_queue = {queue: targets.count(queue) for queue in queues}

    collectors = [Collector(connection, queue, per_queue[queue]) for queue in queues]
    for collector in collectors:
        await collector.start()
    try:
        ids = await publisher.send_many(items)
        arrived = await asyncio.gather(*(collector.wait(timeout=45) for collector in collectors))
    finally:
        for collector in collectors:
            await collector.close()
    received = [r for batch in arrived for r in batch]

    assert len(ids) == total
    assert sorted(r.message.message_id or "" for r in received) == sorted(ids)  # each once
    earliness_ms = []
    for r in received:
        kind = kinds[r.queue]
        command = kind.model_validate_json(r.message.body)
        assert r.message.type == kind.command_type
        assert (r.message.headers or {})[QUEUE] == r.queue
        assert targets[command.n] == r.queue
        # The ladder holds the whole seconds left until its lead before due when the
        # message is written to the broker: never earlier (the consumer holds the rest).
        assert r.arrived_ms >= due_ms(r) - EARLIEST_MS, (command.n, delays[command.n])
        earliness_ms.append(due_ms(r) - r.arrived_ms)
    for queue in queues:  # nothing left over: no duplicates waiting
        assert await queue_depth(connection, queue) == 0
    lateness = sorted(-e for e in earliness_ms)
    record_property("max_earliness_ms", round(max(earliness_ms)))
    record_property("p99_lateness_ms", round(lateness[int(len(lateness) * 0.99)]))
    print(  # shown with -s / -rP
        f"{total} commands: max earliness {max(earliness_ms):.0f} ms (bound {EARLIEST_MS}), "
        f"p99 lateness {lateness[int(len(lateness) * 0.99)]:.0f} ms, max {lateness[-1]:.0f} ms"
    )


async def test_command_for_a_missing_queue_is_kept_and_does_not_block_the_level(
    publisher: Publisher, connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    there, gone = f"{prefix}.there", f"{prefix}.gone"
    await declare_queues(connection, cleanup, prefix, there)
    unroutable = Names(prefix).unroutable
    async with (
        Collector(connection, there, 2) as delivered,
        Collector(connection, unroutable, 3) as kept,
    ):
        # Another client's commands: postdate's publisher would declare ``gone`` first.
        lost_now = await send_around_the_publisher(connection, prefix, command_for(gone)(n=0))
        lost_later = await send_around_the_publisher(connection, prefix, command_for(gone)(n=1), 1)
        on_time = await publisher.send(command_for(there)(n=2), timedelta(seconds=1))
        lost_last = await send_around_the_publisher(connection, prefix, command_for(gone)(n=3), 1)
        also_on_time = await publisher.send(command_for(there)(n=4), timedelta(seconds=1))
        arrived = await delivered.wait(timeout=8)
        parked = await kept.wait(timeout=8)

    assert [r.message.message_id for r in arrived] == [on_time, also_on_time]
    for r in arrived:
        assert r.arrived_ms <= due_ms(r) + ON_TIME_MS
    assert {r.message.message_id for r in parked} == {lost_now, lost_later, lost_last}
    assert all((r.message.headers or {})[QUEUE] == gone for r in parked)
    assert await queue_depth(connection, f"{prefix}.delay.0") == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_send_to_a_queue_no_worker_declared_declares_it_and_arrives(
    publisher: Publisher, connection: AbstractRobustConnection, cleanup: Cleanup, prefix: str
) -> None:
    # The plugin cannot honour mandatory: the publisher declares (and binds) the queue
    # before its first send, so the command is not dropped when its delay is over.
    queue = f"{prefix}.first_deploy"
    cleanup.track(command_queue_topology(prefix, queue))
    sent = await publisher.send(command_for(queue)(n=1), timedelta(seconds=2))
    assert publisher.declared_queues == [queue]

    async with Collector(connection, queue, 1) as collector:
        [arrived] = await collector.wait(timeout=8)

    assert arrived.message.message_id == sent
    assert due_ms(arrived) - EARLIEST_MS <= arrived.arrived_ms <= due_ms(arrived) + ON_TIME_MS
    assert await queue_depth(connection, Names(prefix).unroutable) == 0
