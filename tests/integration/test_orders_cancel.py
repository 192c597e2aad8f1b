"""A pickup cancels its expiry reminder, on SQLite and PostgreSQL: the cancel is written in
the pickup's transaction, and a worker with the schedule store on the orders database acks
the reminder as ``cancelled`` without calling the handler and records every outcome; a
reminder whose order was not picked up is handled (refunded) and recorded too."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from orders.commands import ExpireReservation, expire_command_for, expire_message_id
from orders.domain import InvalidTransition, OrderStatus
from orders.payments import RecordingGateway
from orders.reminders import Services, build_app
from orders.settings import OrdersSettings
from orders.store import OrderStore, ReminderOutcome
from postdate import Outcome, Publisher, RetryPolicy, Settings, Worker, outbox
from postdate.broker._topology import command_queue_topology
from postdate.outbox import OutboxRelay
from postdate.schedule import ScheduleStore, cancel_table
from tests.helpers import Cleanup, eventually
from tests.integration.test_worker_processes import wait_for_consumer

HOLD = timedelta(seconds=3)
FAST = RetryPolicy(max_attempts=5, tiers=(timedelta(seconds=1),))
ROOT = Path(__file__).resolve().parents[2]


async def tombstones(store: OrderStore) -> dict[str, str]:
    """Every cancel written to the orders database: message id -> reason."""
    async with store.sessions() as session:
        rows = await session.execute(select(cancel_table.c.message_id, cancel_table.c.reason))
        return {message_id: reason for message_id, reason in rows}


async def relayed(store: OrderStore) -> bool:
    async with store.sessions() as session:
        return await outbox.pending_count(session) == 0


async def ended(schedule: ScheduleStore, message_id: str) -> bool:
    """Whether the worker recorded a final outcome for ``message_id``."""
    return (await schedule.timeline(message_id)).final is not None


async def test_a_pickup_cancels_its_reminder_in_the_same_transaction(store: OrderStore) -> None:
    order = await store.reserve((await store.place(1500)).id, hold=HOLD)
    other = await store.reserve((await store.place(2500)).id, hold=HOLD)
    key = expire_message_id(order.id, order.reservation)
    schedule = store.schedule()
    assert {item.message_id for item in await schedule.upcoming(correlation_id=str(order.id))} == {
        key
    }

    await store.complete(order.id)

    assert await tombstones(store) == {key: "picked up"}  # the other reminder stays
    assert await schedule.upcoming(correlation_id=str(order.id)) == []
    assert [item.correlation_id for item in await schedule.upcoming()] == [str(other.id)]
    timeline = await schedule.timeline(key)
    assert timeline.cancelled_at is not None
    assert timeline.cancel_reason == "picked up"
    [cancelled] = timeline.outcomes  # recorded by the cancel: no worker will see it
    assert (cancelled.outcome, cancelled.worker) == ("cancelled", "(not published)")
    async with store.sessions() as session:  # the relay will not publish it
        assert await outbox.pending_count(session) == 1

    # A refused pickup writes no cancel: it rolls back with the refused change.
    placed = await store.place(900)
    with pytest.raises(InvalidTransition):
        await store.complete(placed.id)
    with pytest.raises(InvalidTransition):
        await store.complete(order.id)  # already completed
    assert await tombstones(store) == {key: "picked up"}


async def test_worker_acks_a_picked_up_orders_reminder_as_cancelled_and_handles_the_other(
    store: OrderStore,
    expire_command: type[ExpireReservation],
    settings: Settings,
    cleanup: Cleanup,
    publisher: Publisher,
    relay: OutboxRelay,
) -> None:
    picked, expired = [await store.place(amount) for amount in (1200, 3400)]
    keys = {order.id: expire_message_id(order.id, 1) for order in (picked, expired)}
    gateway = RecordingGateway()
    handler_calls: list[int] = []

    async def services() -> Services:  # build_app asks for them once per handler call
        handler_calls.append(1)
        return Services(store, gateway)

    app = build_app(services, command=expire_command, retries=FAST)
    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    schedule = store.schedule()
    worker = Worker(app, settings, name="pytest orders cancel worker", schedule=schedule)
    await worker.start()
    try:
        reserved = [await store.reserve(order.id, hold=HOLD) for order in (picked, expired)]
        relay.notify()
        # Published before the pickup: the worker, not the relay, is what stops it.
        await eventually(lambda: relayed(store), 10, "the relay to publish both", interval=0.1)
        await store.complete(picked.id)
        expires_at = reserved[0].expires_at
        assert expires_at is not None
        assert datetime.now(UTC) < expires_at - timedelta(seconds=1), "picked up too late"

        async def both_ended() -> bool:
            return all([await ended(schedule, key) for key in keys.values()])

        wait = HOLD.total_seconds() + 15
        await eventually(both_ended, wait, "the outcomes of both reminders", interval=0.1)
    finally:
        await worker.stop()

    # The picked-up order's reminder: acked as cancelled, its handler never called.
    assert worker.outcomes[Outcome.CANCELLED] == 1
    assert worker.outcomes[Outcome.HANDLED] == 1
    assert worker.outcomes[Outcome.SKIPPED] == 0
    assert len(handler_calls) == 1  # the expired order's reminder only
    assert await store.reminder_log(picked.id) == []
    assert (await store.get(picked.id)).status is OrderStatus.COMPLETED
    [entry] = await schedule.history(message_id=keys[picked.id])
    assert (entry.outcome, entry.attempt, entry.correlation_id) == ("cancelled", 1, str(picked.id))
    assert entry.type == ExpireReservation.command_type
    assert entry.worker == "pytest orders cancel worker"
    timeline = await schedule.timeline(keys[picked.id])
    assert timeline.scheduled_at is not None
    assert timeline.published_at is not None
    assert timeline.cancelled_at is not None
    assert timeline.scheduled_at <= timeline.published_at <= timeline.cancelled_at
    assert timeline.cancel_reason == "picked up"
    assert timeline.final == entry

    # The other one expired: refunded once, handled, and recorded as such.
    [refund] = await store.refunds()
    assert (refund.order_id, refund.amount_cents) == (expired.id, expired.amount_cents)
    assert refund.idempotency_key == keys[expired.id]
    assert (await store.get(expired.id)).status is OrderStatus.CANCELLED
    [logged] = await store.reminder_log(expired.id)
    assert logged.outcome is ReminderOutcome.REFUNDED
    [entry] = await schedule.history(message_id=keys[expired.id])
    assert (entry.outcome, entry.attempt, entry.correlation_id) == ("handled", 1, str(expired.id))
    timeline = await schedule.timeline(keys[expired.id])
    assert timeline.cancelled_at is None
    assert timeline.due_at is not None
    assert timeline.due_at <= entry.at  # never early
    assert timeline.final == entry
    assert await schedule.upcoming() == []
    handled = await schedule.history(outcome="handled")
    assert [item.message_id for item in handled] == [keys[expired.id]]


def test_the_orders_worker_defaults_the_schedule_url_to_the_orders_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POSTDATE_SCHEDULE_URL", raising=False)
    orders = OrdersSettings.load(database_url="sqlite+aiosqlite:///./x.db")
    assert orders.worker_settings().schedule_url == "sqlite+aiosqlite:///./x.db"
    assert orders.worker_settings(prefetch=7).prefetch == 7
    monkeypatch.setenv("POSTDATE_SCHEDULE_URL", "sqlite+aiosqlite:///./elsewhere.db")
    assert orders.worker_settings().schedule_url == "sqlite+aiosqlite:///./elsewhere.db"


@pytest.mark.timeout(90)
async def test_the_orders_worker_process_honours_pickups_on_its_database(
    tmp_path: Path, settings: Settings, cleanup: Cleanup, publisher: Publisher
) -> None:
    """``python -m consumers.expire_reservation`` with ``DATABASE_URL`` set and
    ``POSTDATE_SCHEDULE_URL`` unset: it creates the schedule tables, acks a picked-up
    order's reminder as cancelled, and records that in the orders database."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
    queue = f"{settings.prefix}.orders.expire_reservation"
    cleanup.track(command_queue_topology(settings.prefix, queue))
    env = {
        **os.environ,
        "RABBITMQ_URL": settings.url,
        "POSTDATE_PREFIX": settings.prefix,
        "POSTDATE_GRACE_PERIOD": "2",
        "DATABASE_URL": database_url,
        "ORDERS_EXPIRE_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
    }
    env.pop("POSTDATE_SCHEDULE_URL", None)
    env.pop("POSTDATE_METRICS_PORT", None)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumers.expire_reservation",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    store = OrderStore.from_url(database_url, command=expire_command_for(queue))
    schedule = store.schedule()
    try:
        await wait_for_consumer(settings.url, queue)  # after its start-up hook made the tables
        order = await store.reserve((await store.place(700)).id, hold=HOLD)
        key = expire_message_id(order.id, order.reservation)
        assert await OutboxRelay(store.sessions, publisher).relay_once() == 1
        await store.complete(order.id)
        await eventually(lambda: ended(schedule, key), 20, f"the outcome of {key}", interval=0.1)
        [entry] = await schedule.history(message_id=key)
        assert entry.outcome == "cancelled"
        assert entry.worker.startswith("postdate-worker-")
        assert await store.reminder_log(order.id) == []
        assert (await store.get(order.id)).status is OrderStatus.COMPLETED
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(child.communicate(), 30)
        await store.close()
    assert child.returncode == 0, stderr.decode()
