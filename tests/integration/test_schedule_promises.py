"""What the schedule says is what happens: a cancel reported after a trim is honoured, a
refused reschedule runs nothing twice, a cancel before the relay is counted, and a
message's queue header never makes a worker declare a queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection, FieldValue

from postdate import CancelTooLate, Publisher, Settings, Worker
from postdate._clock import to_epoch_ms
from postdate.broker._declare import queue_exists
from postdate.outbox import OutboxRelay
from postdate.publish._envelope import ATTEMPT, DUE, QUEUE, SCHEMA, SCHEMA_VERSION
from postdate.schedule import CancelStatus, ScheduleStore
from tests.helpers import Cleanup, command_for, eventually, queue_depth
from tests.integration.test_schedule import (
    Recorder,
    outcomes_recorded,
    relay_all,
    schedule_fixture,
    schedule_rows,
    start_worker,
)

__all__ = ["schedule_fixture"]  # the fixture `schedule`, shared with test_schedule


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_cancel_after_a_trim_is_honoured_by_a_worker_started_before(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
) -> None:
    """SQLite gave the newest tombstone's id out again once a trim deleted it: a worker
    that had seen that id never saw the new cancel, which said "cancelled" at once."""
    cmd = command_for(f"{prefix}.trimmed")
    recorder = Recorder(cmd)
    worker = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} trim")
    try:
        [early] = await schedule_rows(schedule, cmd, 3600)
        assert (await schedule.cancel(early)).status is CancelStatus.CANCELLED
        trimmed = await schedule.trim(timedelta(days=30), now=datetime.now(UTC) + timedelta(31))
        assert trimmed.cancels == 1  # the worker's newest tombstone is gone
        [due_soon] = await schedule_rows(schedule, cmd, 4)
        await relay_all(schedule, publisher)
        result = await schedule.cancel(due_soon)
        assert result.status is CancelStatus.CANCELLED and result.unconfirmed == ()
        await eventually(
            lambda: outcomes_recorded(schedule, [due_soon], "cancelled"), 15, "acked cancelled"
        )
        assert recorder.handled == []
    finally:
        await worker.stop(grace_period=1)


@pytest.fixture(name="fast_relay")
async def fast_relay_fixture(
    schedule: ScheduleStore, publisher: Publisher
) -> AsyncIterator[OutboxRelay]:
    """A relay polling every 20 ms, running in the background."""
    relay = OutboxRelay(schedule.sessions, publisher, poll_interval=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    yield relay
    stop.set()
    await task


async def test_a_refused_reschedule_never_runs_the_command_twice(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    fast_relay: OutboxRelay,
) -> None:
    """Rescheduling a handled command to "now" with a fast relay: the copy was published
    before the reschedule found out it was too late, and ran (3 of 40 tries before)."""
    cmd = command_for(f"{prefix}.twice")
    recorder = Recorder(cmd)
    worker = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} twice")
    originals: list[str] = []
    try:
        for _ in range(12):
            [original] = await schedule_rows(schedule, cmd, 0)
            originals.append(original)
            await eventually(
                lambda: outcomes_recorded(schedule, originals, "handled"), 10, "handled"
            )
            with pytest.raises(CancelTooLate):
                await schedule.reschedule(original, timedelta(0))
        await asyncio.sleep(1)  # a copy, had one gone out, arrives at once
    finally:
        await worker.stop(grace_period=1)
    assert recorder.handled == originals
    assert await schedule.upcoming() == []  # no copy left waiting either


async def test_the_overview_counts_a_cancel_made_before_the_relay(
    prefix: str, schedule: ScheduleStore, publisher: Publisher
) -> None:
    cmd = command_for(f"{prefix}.counted", name="Counted")
    kept, cancelled = await schedule_rows(schedule, cmd, 3600, count=2)
    assert (await schedule.cancel(cancelled, reason="paid")).status is CancelStatus.CANCELLED
    counts = {
        (count.outcome, count.count)
        for count in await schedule.overview(timedelta(days=1), command_type="Counted")
    }
    assert counts == {("cancelled", 1), ("scheduled", 1)}
    [entry] = await schedule.history(outcome="cancelled")
    assert (entry.message_id, entry.detail) == (cancelled, "paid")
    assert await relay_all(schedule, publisher) == 1
    assert [row.message_id for row in await schedule.upcoming()] == [kept]


async def test_an_unknown_queue_header_goes_to_the_catch_all_and_declares_nothing(
    prefix: str, settings: Settings, cleanup: Cleanup, connection: AbstractRobustConnection
) -> None:
    """Another client publishes a command into a worker's queue, its queue header naming
    a queue that does not exist, early: the worker sends it back towards its due time
    through the ladder, and it must land in the catch-all, not in a queue made for it."""
    cmd = command_for(f"{prefix}.foreign")
    nowhere = f"{prefix}.nowhere"
    recorder = Recorder(cmd)
    cleanup.track(recorder.app.topology(settings.prefix, settings.delivery_limit))
    worker = Worker(recorder.app, settings, name=f"{prefix} foreign")
    await worker.start()
    try:
        due = datetime.now(UTC) + timedelta(seconds=6)  # over the hold limit: sent back
        headers: dict[str, FieldValue] = {
            DUE: to_epoch_ms(due),
            ATTEMPT: 1,
            SCHEMA: SCHEMA_VERSION,
            QUEUE: nowhere,
        }
        message = aio_pika.Message(
            cmd(n=1).model_dump_json().encode(),
            headers=headers,
            message_id="foreign-1",
            type=cmd.command_type,
            content_type="application/json",
        )
        channel = await connection.channel()
        await channel.default_exchange.publish(message, routing_key=cmd.queue)
        catch_all = f"{prefix}.unroutable"
        await eventually(
            lambda: _depth_is(connection, catch_all, 1), 20, "the command in the catch-all"
        )
    finally:
        await worker.stop(grace_period=1)
        for queue in (nowhere, f"{nowhere}.poison"):  # only there when the bug is back
            if await queue_exists(connection, queue):
                cleanup.track_queue(queue)
    assert not await queue_exists(connection, nowhere)
    assert not await queue_exists(connection, f"{nowhere}.poison")
    assert recorder.handled == []


async def _depth_is(connection: AbstractRobustConnection, queue: str, depth: int) -> bool:
    with contextlib.suppress(Exception):
        return await queue_depth(connection, queue) == depth
    return False
