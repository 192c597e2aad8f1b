"""Coalesced acks against the broker: a run of deliveries goes as one multiple ack, and
never covers a delivery still held for its due time."""

from __future__ import annotations

import asyncio
from collections import Counter

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from aiormq.exceptions import ChannelInvalidStateError
from prometheus_client import REGISTRY

from postdate import Consumer, Context, Outcome, Publisher, Settings, Worker
from postdate.consume._acks import Acks
from tests.helpers import Cleanup, Ping, command_for, eventually


async def test_a_held_delivery_survives_the_acks_of_the_deliveries_after_it(
    prefix: str, settings: Settings, publisher: Publisher, cleanup: Cleanup
) -> None:
    cmd = command_for(f"{prefix}.acks")
    app = Consumer()
    handled: Counter[int] = Counter()

    @app.handler(cmd)
    async def count(command: Ping, context: Context) -> None:
        handled[command.n] += 1

    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    first = Worker(app, settings, name="test_acks held first")
    await first.start()
    try:
        await publisher.send(cmd(n=0), delay=4.5)  # reaches the worker ~1 s early; held
        await eventually(lambda: held(cmd.queue) == 1, 8, "the held delivery")
        await publisher.send_many((cmd(n=n), 0) for n in range(1, 201))
        await eventually(
            lambda: first.outcomes[Outcome.HANDLED] == 200, 30, "the 200 due now, acked"
        )
        assert 0 not in handled
    finally:
        await first.stop(grace_period=0)  # the held one is cut off, left unacked
    assert first.outcomes[Outcome.HANDLED] == 200
    second = Worker(app, settings, name="test_acks held second")
    await second.start()
    try:
        await eventually(lambda: handled[0] == 1, 15, "the held command, delivered again")
    finally:
        await second.stop()
    assert handled == Counter(range(201))


def held(queue: str) -> float | None:
    """How many deliveries of ``queue`` this process holds until due."""
    return REGISTRY.get_sample_value("postdate_held", {"queue": queue})


async def three_got(connection: AbstractRobustConnection) -> tuple[AbstractQueue, list[int]]:
    """A fresh exclusive queue on a new channel of ``connection``, three messages published
    into it and got (unacked): the queue, and their delivery tags on that channel."""
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    for n in range(3):
        await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), queue.name)
    tags = []
    for _ in range(3):
        message = await queue.get(no_ack=False, timeout=5)
        assert message is not None and message.delivery_tag is not None
        tags.append(message.delivery_tag)
    return queue, tags


async def test_acks_asked_together_settle_every_delivery_once(
    connection: AbstractRobustConnection,
) -> None:
    queue, tags = await three_got(connection)
    channel = queue.channel
    underlay = await channel.get_underlay_channel()
    acks = Acks().of(underlay)
    await asyncio.wait_for(asyncio.gather(*(acks.ack(tag) for tag in tags)), 5)
    await acks.ack(tags[1])  # asked again: a second ack would close the channel
    await asyncio.sleep(0.3)
    assert not underlay.is_closed
    await channel.close()  # anything unacked would go back to the queue
    depth = await connection.channel()
    assert (
        await depth.declare_queue(queue.name, passive=True)
    ).declaration_result.message_count == 0


async def test_an_ack_on_a_closed_channel_fails_at_once(
    connection: AbstractRobustConnection,
) -> None:
    queue, tags = await three_got(connection)
    underlay = await queue.channel.get_underlay_channel()
    acks = Acks().of(underlay)
    await queue.channel.close()
    with pytest.raises(ChannelInvalidStateError):
        await asyncio.wait_for(acks.ack(tags[0]), 5)


async def test_an_ack_whose_caller_was_cut_off_before_it_went_out_is_not_sent(
    connection: AbstractRobustConnection,
) -> None:
    """A worker cut off by the grace period while its ack waits records the delivery as
    abandoned: the ack must then not go out behind its back."""
    queue, tags = await three_got(connection)
    acks = Acks().of(await queue.channel.get_underlay_channel())
    first = asyncio.create_task(acks.ack(tags[0]))
    await asyncio.sleep(0)  # the flush of the first is under way
    cut = asyncio.create_task(acks.ack(tags[1]))
    await asyncio.sleep(0)  # the second waits for the next round of that flush
    cut.cancel()
    await asyncio.wait_for(first, 5)
    with pytest.raises(asyncio.CancelledError):
        await cut
    await asyncio.wait_for(acks.ack(tags[2]), 5)
    await queue.channel.close()
    await asyncio.sleep(0.5)
    again = await (await connection.channel()).declare_queue(queue.name, passive=True)
    assert again.declaration_result.message_count == 1  # the second, given back by the close


async def test_single_acks_asked_in_one_turn_go_out_in_a_few_loop_turns(
    connection: AbstractRobustConnection,
) -> None:
    """Held deliveries come due in their own order, so a turn's acks are often single
    frames. Each frame waited for its own write before: 250 took 250 rounds of the
    writer, and the last handler's ack left long after it returned (under 20 connection
    cuts, 1,442-1,862 commands were handled twice instead of about 60)."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=500)
    queue = await channel.declare_queue(exclusive=True)
    for n in range(500):
        await channel.default_exchange.publish(aio_pika.Message(b"%d" % n), queue.name)
    delivered: list[int] = []
    all_in = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        assert message.delivery_tag is not None
        delivered.append(message.delivery_tag)
        if len(delivered) == 500:
            all_in.set()

    await queue.consume(on_message)
    await asyncio.wait_for(all_in.wait(), 10)
    acks = Acks().of(await channel.get_underlay_channel())
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    try:
        every_other = sorted(delivered)[::2]  # no two adjacent: 250 single frames
        await asyncio.wait_for(asyncio.gather(*(acks.ack(tag) for tag in every_other)), 10)
    finally:
        counter.cancel()
    assert turns < 200, f"{turns} loop turns for 250 acks"  # 505 before, 55 after
    await channel.close()
    depth = await connection.channel()
    left = await depth.declare_queue(queue.name, passive=True)
    assert left.declaration_result.message_count == 250  # the other half, given back
