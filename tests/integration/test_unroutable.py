"""Commands whose queue was missing at delivery wait in the catch-all queue and can be
sent on once the queue exists."""

from __future__ import annotations

import asyncio
import time

from aio_pika.abc import AbstractRobustConnection

from postdate.publisher import Publisher
from postdate.topology import Names, command_queue_topology
from postdate.unroutable import count_unroutable, redeliver_unroutable
from tests.helpers import Cleanup, collect, command_for, queue_depth


async def test_parked_commands_are_counted_and_redelivered_once_their_queue_exists(
    prefix: str, publisher: Publisher, cleanup: Cleanup, connection: AbstractRobustConnection
) -> None:
    late = command_for(f"{prefix}.declared-late")
    other = command_for(f"{prefix}.still-missing", name="Other")
    sent = await publisher.send(late(n=1), delay=1)
    await publisher.send(other(n=2))
    deadline = time.monotonic() + 10
    while await queue_depth(connection, Names(prefix).unroutable) < 2:
        assert time.monotonic() < deadline, "commands did not reach the catch-all queue"
        await asyncio.sleep(0.1)
    assert await count_unroutable(connection, prefix) == {late.queue: 1, other.queue: 1}

    await cleanup.declare(connection, command_queue_topology(prefix, late.queue))
    assert await redeliver_unroutable(connection, publisher, late.queue) == 1
    [arrived] = await collect(connection, late.queue, 1, timeout=10)
    assert arrived.message.message_id == sent
    assert arrived.message.body == b'{"n":1}'
    assert "x-death" not in (arrived.message.headers or {})
    assert await count_unroutable(connection, prefix) == {other.queue: 1}
