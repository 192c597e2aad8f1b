"""The registry ``P.queues``: one message per command queue declared under the prefix,
so that operator commands (``postdate status``) find every poison queue without being
given the app. Workers register their queues when they start, publishers the queues
they declare; a run under the registry's read lock (:mod:`postdate.parking._parked`) keeps it free
of duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import aclosing

import aio_pika
from aio_pika.abc import AbstractConnection

from postdate.broker._declare import declare_topology, queue_exists
from postdate.broker._topology import QueueSpec, Topology, parking
from postdate.parking._parked import MAX_HELD, ParkedRead, delete_parked


def registry_queue(prefix: str) -> str:
    """The name of the registry queue under ``prefix``."""
    return f"{prefix}.queues"


def registry_topology(prefix: str) -> Topology:
    """The registry queue: a parking queue (nothing expires or is dropped)."""
    return Topology(queues=(QueueSpec(registry_queue(prefix), parking()),))


async def register(connection: AbstractConnection, prefix: str, queues: Iterable[str]) -> None:
    """Add ``queues`` to the registry (those already in it are not added again).

    Raises:
        ReadLockBusy: another run on the registry did not end in time.
        TopologyMismatch: the registry queue exists with other arguments.
    """
    await declare_topology(connection, registry_topology(prefix))
    async with ParkedRead(connection, registry_queue(prefix)) as run:
        known = await _names(run)
        new = sorted(set(queues) - known)
        if not new:
            return
        channel = await connection.channel(publisher_confirms=True)
        try:
            for queue in new:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        queue.encode(),
                        message_id=queue,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=registry_queue(prefix),
                )
        finally:
            await channel.close()


async def registered(connection: AbstractConnection, prefix: str) -> list[str]:
    """The registered command queues, sorted (none when the registry does not exist yet).

    Raises:
        ReadLockBusy: another run on the registry did not end in time.
    """
    if not await queue_exists(connection, registry_queue(prefix)):
        return []  # reading must not create it (nor need the permission to)
    async with ParkedRead(connection, registry_queue(prefix)) as run:
        return sorted(await _names(run))


async def _names(run: ParkedRead) -> set[str]:
    names = set()
    async with aclosing(run.messages(limit=MAX_HELD)) as messages:
        async for message in messages:
            names.add(message.body.decode(errors="replace"))
    return names


async def unregister(connection: AbstractConnection, prefix: str, queues: Iterable[str]) -> int:
    """Remove ``queues`` from the registry (``topology delete``); returns how many were.

    Raises:
        ReadLockBusy: another run on the registry did not end in time.
    """
    if not await queue_exists(connection, registry_queue(prefix)):
        return 0
    gone = set(queues)
    tally = await delete_parked(
        connection, registry_queue(prefix), lambda message: message.body.decode() in gone
    )
    return tally.matched
