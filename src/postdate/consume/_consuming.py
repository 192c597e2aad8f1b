"""A worker's consuming channel: its consumers, their callback, and whether they are up.

The readiness checks follow aio-pika's reconnects: they look at the connection, its
transport and the channel's registered consumers as they are now, not at what the worker
last did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from postdate.broker._topology import Topology
from postdate.consume._dispatch import Dispatcher
from postdate.observe import _metrics as metrics
from postdate.observe._logs import get_logger

log = get_logger(__name__)

OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]
Consumers = list[tuple[AbstractQueue, str]]


async def start_consuming(
    channel: AbstractRobustChannel,
    topology: Topology,
    on_message: Callable[[str], OnMessage],
    consumers: Consumers,
    queues: Sequence[str],
) -> None:
    """Consume each of ``queues`` on ``channel`` with ``on_message(queue)``, appending
    each queue with its consumer tag to ``consumers`` as soon as it consumes.

    Each queue is declared (not merely looked up) through the channel with its arguments
    in ``topology``, so that the robust channel restores the queue and its consumer after
    a reconnect.

    Raises:
        aiormq.exceptions.AMQPError: the broker refused a declare (a queue exists with
            other arguments) or a consume.
    """
    specs = {spec.name: spec for spec in topology.queues}
    for name in queues:
        queue = await channel.declare_queue(
            name, durable=True, arguments=dict(specs[name].arguments)
        )
        consumers.append((queue, await queue.consume(on_message(name))))


def delivery_callback(
    dispatcher: Dispatcher, queue: str, stopping: asyncio.Event, tasks: set[asyncio.Task[object]]
) -> OnMessage:
    """The consumer callback of ``queue``: each delivery's task is kept in ``tasks`` while
    ``dispatcher`` processes it. Once ``stopping`` is set a delivery is left unacked (the
    broker redelivers it after the worker closes); a cancelled one is logged as
    abandoned; a bug of ours (any other exception) is logged and the delivery given back.
    """
    in_flight = metrics.in_flight(queue)

    async def on_message(message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        in_flight.inc()
        try:
            if stopping.is_set():
                return  # left unacked: redelivered after we close
            await dispatcher.process(message, queue)
        except asyncio.CancelledError:  # the grace period ended, or the channel closed
            reason = (
                "cut off by the grace period"
                if stopping.is_set()
                else "channel closed: will be redelivered"
            )
            dispatcher.abandoned(message, queue, reason)
            raise
        except Exception:  # a bug of ours: give the delivery back, keep running
            log.exception("worker.dispatch_failed", message_id=message.message_id)
            with suppress(Exception):
                await dispatcher.give_back(message)
        finally:
            in_flight.dec()
            tasks.discard(task)

    return on_message


def is_connected(connection: AbstractRobustConnection | None) -> bool:
    """Whether ``connection`` is open (cheap; read from any thread)."""
    if connection is None or connection.is_closed or not connection.connected.is_set():
        return False
    transport = connection.transport
    return transport is not None and not transport.connection.is_closed


async def is_consuming(
    channel: AbstractChannel | None, consumers: Consumers, queue_count: int
) -> bool:
    """Whether ``channel`` is open with ``consumers`` (one per queue, ``queue_count`` of
    them) all registered on it. Call it only while the connection is up (see
    :func:`is_connected`): it then returns without waiting."""
    if channel is None or channel.is_closed or len(consumers) < queue_count:
        return False
    underlay = await channel.get_underlay_channel()
    if not isinstance(underlay, aiormq.Channel):
        return False
    return all(tag in underlay.consumers for _, tag in consumers)
