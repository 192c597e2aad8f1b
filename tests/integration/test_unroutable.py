"""Commands whose queue was missing at delivery wait in the catch-all queue and are sent
on once the queue exists: by a worker's start, or by `postdate unroutable redeliver`."""

from __future__ import annotations

from datetime import UTC, datetime

from aio_pika.abc import AbstractRobustConnection

from postdate import Consumer, Context, Outcome, Worker
from postdate._settings import Settings
from postdate.broker._topology import Names, command_queue_topology
from postdate.parking._unroutable import count_unroutable, redeliver_unroutable
from postdate.publish._envelope import Envelope
from postdate.publish._publisher import Publisher
from tests.helpers import (
    Cleanup,
    Ping,
    collect,
    command_for,
    eventually,
    queue_depth,
    send_around_the_publisher,
)


async def parked_count(connection: AbstractRobustConnection, prefix: str, count: int) -> None:
    async def arrived() -> bool:
        return await queue_depth(connection, Names(prefix).unroutable) >= count

    await eventually(arrived, 15, f"{count} commands in the catch-all queue")


async def park_directly(connection: AbstractRobustConnection, prefix: str, command: Ping) -> str:
    """Put ``command``, due now, straight into the catch-all queue; its message id."""
    envelope = Envelope.for_command(command, datetime.now(UTC))
    channel = await connection.channel(publisher_confirms=True)
    try:
        underlay = await channel.get_underlay_channel()
        await underlay.basic_publish(
            envelope.body, routing_key=Names(prefix).unroutable, properties=envelope.properties()
        )
    finally:
        await channel.close()
    return envelope.message_id


async def test_parked_commands_are_counted_and_redelivered_once_their_queue_exists(
    prefix: str, publisher: Publisher, cleanup: Cleanup, connection: AbstractRobustConnection
) -> None:
    late = command_for(f"{prefix}.declared-late")
    other = command_for(f"{prefix}.still-missing", name="Other")
    sent = await send_around_the_publisher(connection, prefix, late(n=1), delay=1)
    await send_around_the_publisher(connection, prefix, other(n=2))
    await parked_count(connection, prefix, 2)
    counts, parked = await count_unroutable(connection, prefix)
    assert counts == {late.queue: 1, other.queue: 1} and parked == 2

    await cleanup.declare(connection, command_queue_topology(prefix, late.queue))
    redelivery = await redeliver_unroutable(connection, publisher)
    assert redelivery.tally.moved == [sent]
    assert redelivery.missing == {other.queue: 1}  # its queue still does not exist: stays
    [arrived] = await collect(connection, late.queue, 1, timeout=10)
    assert arrived.message.message_id == sent
    assert arrived.message.body == b'{"n":1}'
    assert "x-death" not in (arrived.message.headers or {})
    assert (await count_unroutable(connection, prefix))[0] == {other.queue: 1}


async def test_first_deploy_commands_sent_before_any_worker_are_all_handled(
    prefix: str,
    settings: Settings,
    publisher: Publisher,
    cleanup: Cleanup,
    connection: AbstractRobustConnection,
) -> None:
    """The publisher service is up before the workers: its sends declare the queue (and
    say so); commands another client sent meanwhile wait in the catch-all queue; the
    worker's start sends those on; every command is handled."""
    cmd = command_for(f"{prefix}.first-deploy")
    sent = {await publisher.send(cmd(n=n), delay=n % 2) for n in range(20)}
    assert publisher.declared_queues == [cmd.queue]  # the counted warning
    other = command_for(f"{prefix}.first-deploy-other", name="Other")
    around = {await send_around_the_publisher(connection, prefix, other(n=n)) for n in range(5)}
    await parked_count(connection, prefix, 5)

    app = Consumer()
    handled: list[str] = []

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        handled.append(context.message_id)

    @app.handler(other)
    async def handle_other(command: Ping, context: Context) -> None:
        handled.append(context.message_id)

    cleanup.track(app.topology(prefix, settings.delivery_limit))
    worker = Worker(app, settings, name=f"{prefix} first-deploy worker")
    await worker.start()
    try:
        await eventually(lambda: len(handled) >= 25, 15, "every command handled")
        assert set(handled) == sent | around
        assert worker.outcomes[Outcome.HANDLED] == 25
        assert await queue_depth(connection, Names(prefix).unroutable) == 0
    finally:
        await worker.stop(grace_period=1)


async def test_a_running_worker_sends_on_commands_that_land_in_the_catch_all_later(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    connection: AbstractRobustConnection,
) -> None:
    """A restarting broker can dead-letter ladder commands before it has recovered their
    bindings: they land in the catch-all queue while the worker runs. The worker sends
    them on when it sees the queue grow; another queue's command stays parked."""
    cmd = command_for(f"{prefix}.landed-late")
    other = command_for(f"{prefix}.landed-late-other", name="Other")
    app = Consumer()
    handled: list[str] = []

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        handled.append(context.message_id)

    cleanup.track(app.topology(prefix, settings.delivery_limit))
    worker = Worker(app, settings, name=f"{prefix} landed-late worker")
    worker.unroutable_poll_seconds = 0.2
    await worker.start()
    try:
        # After start: as the broker would, with no binding for the command's queue.
        stray = await send_around_the_publisher(connection, prefix, other(n=0))
        await parked_count(connection, prefix, 1)
        landed = {await park_directly(connection, prefix, cmd(n=n)) for n in range(3)}
        await eventually(lambda: len(handled) >= 3, 10, "the parked commands handled")
        assert set(handled) == landed
        counts, _ = await count_unroutable(connection, prefix)
        assert counts == {other.queue: 1}
        assert stray not in handled
    finally:
        await worker.stop(grace_period=1)
