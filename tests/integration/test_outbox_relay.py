"""The outbox relay against the real broker, on SQLite and PostgreSQL: confirmed publishes
with the row's message id and exact due time, failures kept pending, a relay killed
mid-batch losing nothing, and two relays on PostgreSQL never publishing a row twice."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aio_pika.abc import AbstractRobustConnection

from orders.commands import ExpireReservation, expire_message_id
from orders.store import OrderStore
from postdate import Publisher, Settings, outbox
from postdate._clock import to_epoch_ms
from postdate.broker._topology import command_queue_topology
from postdate.delay._routing import LADDER_LEAD
from postdate.outbox import OutboxRelay, OutboxRow, RelayHooks
from postdate.publish._envelope import DUE
from tests.helpers import Cleanup, collect, queue_depth
from tests.integration.orders_fixtures import READY, STAGES, Database, relay_child_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def command_queue(
    connection: AbstractRobustConnection,
    cleanup: Cleanup,
    settings: Settings,
    expire_command: type[ExpireReservation],
) -> str:
    """The reminder's command queue, declared (tests consume it directly)."""
    await cleanup.declare(connection, command_queue_topology(settings.prefix, expire_command.queue))
    return expire_command.queue


def reminder(store: OrderStore) -> ExpireReservation:
    return store.command(order_id=uuid.uuid4())


async def test_relay_publishes_rows_with_their_ids_and_due_times(
    store: OrderStore,
    publisher: Publisher,
    connection: AbstractRobustConnection,
    command_queue: str,
) -> None:
    now = datetime.now(UTC)
    async with store.sessions() as session, session.begin():
        ids = [
            await outbox.schedule(
                session, reminder(store), delay=delay, correlation_id=f"c{delay}", now=now
            )
            for delay in (0, 1, 2)
        ]
    assert OutboxRelay(store.sessions, publisher).lock_rows is None  # decided on first use
    relay = OutboxRelay(store.sessions, publisher)
    assert await relay.relay_once() == 3
    assert relay.lock_rows is (store.dialect == "postgresql")
    assert await relay.relay_once() == 0
    async with store.sessions() as session:
        assert await outbox.pending_count(session) == 0
        rows = [await outbox.get(session, message_id) for message_id in ids]
    received = await collect(connection, command_queue, 3, timeout=10)
    by_id = {item.message.message_id: item for item in received}
    assert set(by_id) == set(ids)
    for row in rows:
        assert row is not None
        assert row.relayed
        item = by_id[row.message_id]
        headers = item.message.headers or {}
        assert headers[DUE] == to_epoch_ms(row.due_at)  # the exact due time travels along
        assert item.message.correlation_id == row.correlation_id
        # the ladder carries whole seconds until its lead before due; the consumer holds
        # the lead and the sub-second remainder
        earliest = row.due_at - LADDER_LEAD - timedelta(seconds=1.05)
        assert item.arrived >= earliest.timestamp()


async def test_a_failed_publish_stays_pending(store: OrderStore, rabbitmq: str) -> None:
    async with store.sessions() as session, session.begin():
        message_id = await outbox.schedule(session, reminder(store), delay=5)
    lost = Settings.load(prefix=f"nowhere{uuid.uuid4().hex[:8]}", rabbitmq_url=rabbitmq)
    async with Publisher(settings=lost, declare=False) as nowhere:  # no ladder: returned
        relay = OutboxRelay(store.sessions, nowhere)
        assert await relay.relay_once() == 0
        assert relay.failed == 1
    async with store.sessions() as session:
        row = await outbox.get(session, message_id)
        assert await outbox.pending_count(session) == 1
    assert row is not None
    assert not row.relayed
    assert row.attempts == 1
    assert row.last_error is not None
    assert "PublishReturned" in row.last_error


@pytest.mark.parametrize("stage", STAGES)
async def test_a_relay_killed_mid_batch_still_gets_the_reminder_out(
    stage: str,
    database: Database,
    store: OrderStore,
    settings: Settings,
    publisher: Publisher,
    connection: AbstractRobustConnection,
    command_queue: str,
) -> None:
    """Reserve commits the order and its reminder; the relay dies before its publish (or
    after the publish, before marking it sent). A new relay publishes it: nothing lost,
    at worst a duplicate with the same message id."""
    order = await store.reserve((await store.place(1500)).id, hold=timedelta(seconds=1))
    message_id = expire_message_id(order.id, order.reservation)
    env = {**os.environ, "RABBITMQ_URL": settings.url, "PYTHONPATH": str(ROOT)}
    child = await asyncio.create_subprocess_exec(
        *relay_child_command(database, settings.prefix, stage),
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.decode().startswith(READY), line
    finally:
        child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 10)
    async with store.sessions() as session:
        row = await outbox.get(session, message_id)
    assert row is not None
    assert not row.relayed

    relay = OutboxRelay(store.sessions, publisher)
    deadline = time.monotonic() + 15
    while await relay.relay_once() == 0:  # PostgreSQL frees the dead session's lock soon
        assert time.monotonic() < deadline, "the killed relay's batch stayed locked"
        await asyncio.sleep(0.1)
    copies = 1 if stage == "before_publish" else 2
    received = await collect(connection, command_queue, copies, timeout=10)
    assert {item.message.message_id for item in received} == {message_id}
    await asyncio.sleep(0.3)
    assert await queue_depth(connection, command_queue) == 0
    async with store.sessions() as session:
        row = await outbox.get(session, message_id)
    assert row is not None
    assert row.relayed


async def test_two_relays_on_postgresql_never_publish_a_row_twice(
    postgres: Database,
    expire_command: type[ExpireReservation],
    publisher: Publisher,
    connection: AbstractRobustConnection,
    command_queue: str,
) -> None:
    store = OrderStore(postgres.engine())
    await store.create_schema()
    try:
        async with store.sessions() as session, session.begin():
            ids = await outbox.schedule_many(
                session, [(expire_command(order_id=uuid.uuid4()), 0) for _ in range(500)]
            )

        async def dawdle(rows: Sequence[OutboxRow]) -> None:
            await asyncio.sleep(0.005)  # hold the lock a moment, so the relays interleave

        relays = [
            OutboxRelay(
                store.sessions,
                publisher,
                batch_size=25,
                poll_interval=0.05,
                hooks=RelayHooks(before_publish=dawdle),
            )
            for _ in range(2)
        ]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(relay.run(stop)) for relay in relays]
        try:
            received = await collect(connection, command_queue, 500, timeout=30)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        counts = Counter(item.message.message_id for item in received)
        assert set(counts) == set(ids)
        assert max(counts.values()) == 1
        await asyncio.sleep(0.3)
        assert await queue_depth(connection, command_queue) == 0  # no second copy anywhere
        assert sum(relay.published for relay in relays) == 500
        assert all(relay.published > 0 for relay in relays), [r.published for r in relays]
        assert all(relay.lock_rows for relay in relays)
        async with store.sessions() as session:
            assert await outbox.pending_count(session) == 0
    finally:
        await store.close()
