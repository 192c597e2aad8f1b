"""Cancel, reschedule and the timeline against the real broker and database (SQLite and
PostgreSQL): a cancelled command is never handed to its handler, wherever it was when it
was cancelled (outbox, ladder, held by a worker for its due time); one cancelled too late
says so."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from postdate import Consumer, Context, Outcome, Publisher, Settings, Worker, outbox
from postdate._errors import CancelTooLate, CommandCancelled, UnknownCommand
from postdate.delay._routing import LADDER_LEAD
from postdate.outbox import OutboxRelay
from postdate.publish._envelope import Envelope
from postdate.schedule import STALE_AFTER_SECONDS, CancelStatus, ScheduleStore, cancel_in, history
from tests.helpers import Cleanup, Ping, command_for, eventually
from tests.integration.orders_fixtures import Database


@pytest.fixture(name="schedule")
async def schedule_fixture(database: Database) -> AsyncIterator[ScheduleStore]:
    """A schedule store with its tables on this test's database."""
    engine = database.engine()
    store = ScheduleStore(async_sessionmaker(engine, expire_on_commit=False), confirm_timeout=5)
    await store.create_tables()
    yield store
    await engine.dispose()


class Recorder:
    """A consumer app whose handler records the message ids it was handed."""

    def __init__(self, cmd: type[Ping]) -> None:
        self.app = Consumer()
        self.handled: list[str] = []
        self.running = asyncio.Event()
        self.release: asyncio.Event | None = None

        @self.app.handler(cmd)
        async def handle(command: Ping, context: Context) -> None:
            self.running.set()
            if self.release is not None:
                await self.release.wait()
            self.handled.append(context.message_id)


async def start_worker(
    recorder: Recorder,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    name: str,
) -> Worker:
    cleanup.track(recorder.app.topology(settings.prefix, settings.delivery_limit))
    worker = Worker(recorder.app, settings, name=name, schedule=schedule)
    await worker.start()
    return worker


async def schedule_rows(
    schedule: ScheduleStore, cmd: type[Ping], delay: float, count: int = 1, entity: str = "acct-1"
) -> list[str]:
    async with schedule.sessions() as session, session.begin():
        items = [(cmd(n=n), timedelta(seconds=delay)) for n in range(count)]
        return await outbox.schedule_many(session, items, correlation_id=entity)


async def relay_all(schedule: ScheduleStore, publisher: Publisher) -> int:
    relay = OutboxRelay(schedule.sessions, publisher, batch_size=2000)
    sent = 0
    while moved := await relay.relay_once():
        sent += moved
    return sent


async def outcomes_recorded(schedule: ScheduleStore, ids: list[str], outcome: str) -> bool:
    entries = await schedule.history(outcome=outcome, limit=None)
    return {entry.message_id for entry in entries} >= set(ids)


async def test_cancel_before_relay_keeps_it_in_the_outbox_unpublished(
    prefix: str, schedule: ScheduleStore, publisher: Publisher
) -> None:
    cmd = command_for(f"{prefix}.before-relay")
    kept, cancelled = await schedule_rows(schedule, cmd, 60, count=2)
    result = await schedule.cancel(cancelled, reason="paid")
    assert result.status is CancelStatus.CANCELLED and result.unconfirmed == ()
    assert [row.message_id for row in await schedule.upcoming(correlation_id="acct-1")] == [kept]
    assert await relay_all(schedule, publisher) == 1  # the cancelled row is not published
    async with schedule.sessions() as session:
        assert await outbox.pending_count(session) == 0
    timeline = await schedule.timeline(cancelled)
    assert timeline.published_at is None and timeline.cancel_reason == "paid"
    assert (await schedule.cancel(cancelled)).status is CancelStatus.ALREADY_CANCELLED
    async with schedule.sessions() as session, session.begin():  # in the caller's transaction
        assert await cancel_in(session, [cancelled, kept, "sent-directly"], reason="paid") == 2
    assert await schedule.upcoming(correlation_id="acct-1") == []


async def test_cancel_in_the_ladder_and_while_held_is_never_handled(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
    connection: AbstractRobustConnection,
) -> None:
    """Three commands: one cancelled while it travels the ladder, one while the worker
    holds it for its due time (sent straight into the queue, due in 2 s), one left alone."""
    cmd = command_for(f"{prefix}.in-flight")
    recorder = Recorder(cmd)
    worker = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} in-flight")
    try:
        ladder_for = LADDER_LEAD.total_seconds() + 4  # in the ladder for 4 s, then held
        in_ladder, kept = await schedule_rows(schedule, cmd, ladder_for, count=2)
        assert await relay_all(schedule, publisher) == 2
        held = Envelope.for_command(cmd(n=9), datetime.now(UTC) + timedelta(seconds=2))
        channel = await connection.channel()
        await (await channel.get_underlay_channel()).basic_publish(
            held.body, routing_key=cmd.queue, properties=held.properties()
        )

        def holding() -> bool:
            return REGISTRY.get_sample_value("postdate_held", {"queue": cmd.queue}) == 1.0

        await eventually(holding, 5, "the worker holds the command sent into its queue")
        results = [
            await schedule.cancel(held.message_id, scheduled_only=False),
            await schedule.cancel(in_ladder),
        ]
        assert [result.status for result in results] == [CancelStatus.CANCELLED] * 2
        await eventually(lambda: kept in recorder.handled, 10, "the kept command handled")
        cancelled = [held.message_id, in_ladder]
        await eventually(
            lambda: outcomes_recorded(schedule, cancelled, "cancelled"), 10, "two cancelled"
        )
        assert recorder.handled == [kept]
        assert worker.outcomes[Outcome.CANCELLED] == 2
        timeline = await schedule.timeline(in_ladder)
        assert timeline.published_at is not None
        assert [entry.outcome for entry in timeline.outcomes] == ["cancelled"]
        late = await schedule.cancel(kept)
        assert late.status is CancelStatus.TOO_LATE and late.detail == "already handled"
    finally:
        await worker.stop(grace_period=1)


async def test_cancel_while_the_handler_runs_is_reported_too_late(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
) -> None:
    cmd = command_for(f"{prefix}.running")
    recorder = Recorder(cmd)
    recorder.release = asyncio.Event()
    worker = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} running")
    try:
        message_id = await publisher.send(cmd(n=1))
        await asyncio.wait_for(recorder.running.wait(), 10)
        result = await schedule.cancel(message_id, scheduled_only=False)
        assert result.status is CancelStatus.TOO_LATE
        assert result.detail.startswith(f"was running on {prefix} running/")
        recorder.release.set()
        await eventually(lambda: recorder.handled == [message_id], 5, "the handler finished")
    finally:
        await worker.stop(grace_period=1)


async def test_ten_thousand_cancelled_with_two_workers_none_handled(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
) -> None:
    cmd = command_for(f"{prefix}.many")
    recorder = Recorder(cmd)
    workers = [
        await start_worker(recorder, settings, cleanup, schedule, f"{prefix} many{n}")
        for n in range(2)
    ]
    try:
        # Due 25 s ahead: relaying 10,000 and cancelling them took 16.7 s on slow cores.
        ids = await schedule_rows(schedule, cmd, 25, count=10_000)
        started = time.monotonic()
        assert await relay_all(schedule, publisher) == 10_000  # all in the ladder
        results = await schedule.cancel_where(command_type="Ping", queue=cmd.queue)
        assert time.monotonic() - started < 24, "cancelled before the first fell due"
        assert {result.status for result in results} == {CancelStatus.CANCELLED}
        assert len(results) == 10_000
        await eventually(
            lambda: sum(worker.outcomes[Outcome.CANCELLED] for worker in workers) == 10_000,
            60,
            "10,000 acked as cancelled",
            interval=0.5,
        )
        assert recorder.handled == []
        assert await schedule.upcoming(queue=cmd.queue) == []
        await eventually(
            lambda: outcomes_recorded(schedule, ids, "cancelled"), 10, "history of all 10,000"
        )
    finally:
        for worker in workers:
            await worker.stop(grace_period=1)


async def test_a_worker_started_after_the_cancel_honours_it(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
) -> None:
    cmd = command_for(f"{prefix}.restart")
    recorder = Recorder(cmd)
    first = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} first")
    cancelled, kept = await schedule_rows(schedule, cmd, 3, count=2)
    await relay_all(schedule, publisher)
    assert (await schedule.cancel(cancelled)).status is CancelStatus.CANCELLED
    await first.stop(grace_period=1)  # restarted between the cancel and the delivery
    second = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} second")
    try:
        await eventually(lambda: recorder.handled == [kept], 10, "the kept one handled")
        await eventually(
            lambda: outcomes_recorded(schedule, [cancelled], "cancelled"), 10, "cancelled"
        )
        assert recorder.handled == [kept]
    finally:
        await second.stop(grace_period=1)


async def test_reschedule_moves_the_command_and_links_the_two(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
) -> None:
    cmd = command_for(f"{prefix}.reschedule")
    recorder = Recorder(cmd)
    worker = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} reschedule")
    try:
        [original] = await schedule_rows(schedule, cmd, 3600)
        await relay_all(schedule, publisher)
        moved = await schedule.reschedule(original, timedelta(seconds=1))
        await relay_all(schedule, publisher)
        await eventually(lambda: recorder.handled == [moved], 10, "the moved command handled")
        assert (await schedule.timeline(original)).cancel_reason == f"rescheduled as {moved}"
        await eventually(
            lambda: outcomes_recorded(schedule, [moved], "handled"), 5, "history written"
        )
        with pytest.raises(CancelTooLate):
            await schedule.reschedule(moved, timedelta(seconds=5))
        with pytest.raises(UnknownCommand):
            await schedule.reschedule("no-such-id", timedelta(seconds=5))
        with pytest.raises(CommandCancelled):  # it would come back to life
            await schedule.reschedule(original, timedelta(seconds=5))
    finally:
        await worker.stop(grace_period=1)


async def test_history_overview_and_trim(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
) -> None:
    cmd = command_for(f"{prefix}.history")
    recorder = Recorder(cmd)
    worker = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} history")
    try:
        done = await schedule_rows(schedule, cmd, 0, count=3, entity="acct-7")
        await schedule_rows(schedule, cmd, 3600, count=2, entity="acct-7")
        await relay_all(schedule, publisher)
        await eventually(lambda: outcomes_recorded(schedule, done, "handled"), 10, "3 handled")
    finally:
        await worker.stop(grace_period=1)
    assert len(await schedule.history(correlation_id="acct-7")) == 3
    assert len(await schedule.upcoming(correlation_id="acct-7")) == 2
    counts = {
        (count.outcome, count.count)
        for count in await schedule.overview(timedelta(days=1), command_type="Ping")
    }
    assert counts == {("handled", 3), ("scheduled", 2)}
    later = datetime.now(UTC) + timedelta(hours=2)
    trimmed = await schedule.trim(timedelta(hours=1), now=later)
    assert (trimmed.history, trimmed.outbox) == (3, 3)  # what is still to come stays
    assert len(await schedule.upcoming(correlation_id="acct-7")) == 2
    assert await schedule.history(correlation_id="acct-7") == []


async def test_no_handler_starts_while_the_cancels_cannot_be_read(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
) -> None:
    """With the tombstones unreadable for longer than STALE_AFTER_SECONDS, deliveries wait
    unacked (a cancel made meanwhile could not be honoured); they go on once readable."""
    cmd = command_for(f"{prefix}.stale")
    recorder = Recorder(cmd)
    worker = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} stale")
    try:
        await rename_table(schedule, "postdate_cancel", "postdate_cancel_away")
        await asyncio.sleep(STALE_AFTER_SECONDS + 0.5)
        message_id = await publisher.send(cmd(n=1))
        await asyncio.sleep(1.5)
        assert recorder.handled == []
        await rename_table(schedule, "postdate_cancel_away", "postdate_cancel")
        await eventually(lambda: recorder.handled == [message_id], 5, "handled once readable")
    finally:
        await worker.stop(grace_period=1)


async def rename_table(schedule: ScheduleStore, old: str, new: str) -> None:
    async with schedule.sessions() as session, session.begin():
        await session.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_the_fast_history_insert_stores_what_the_plain_insert_stores(
    schedule: ScheduleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver-level executemany applies the column types as SQLAlchemy would (aware
    UTC datetimes; naive text on SQLite); its fallback, the plain insert, stores the same."""
    at = datetime(2026, 11, 25, 23, 0, 0, 123456, tzinfo=UTC)

    def row(message_id: str) -> tuple[object, ...]:
        return (message_id, "q", "Ping", "acct-9", 2, "retried", "boom", at, 1, "w")

    async with schedule.sessions() as session, session.begin():
        await history.insert_history(session, [row("fast")])
    monkeypatch.setattr(history.HistoryInsert, "compile", _refuse)
    monkeypatch.setattr(history, "_plans", {})
    async with schedule.sessions() as session, session.begin():
        await history.insert_history(session, [row("plain")])
    stored = {entry.message_id: entry for entry in await schedule.history(correlation_id="acct-9")}
    assert stored["fast"].at == stored["plain"].at == at
    assert dataclasses.replace(stored["fast"], message_id="plain") == stored["plain"]


def _refuse(dialect: object) -> None:
    raise RuntimeError("compiled unexpectedly")


async def test_a_worker_stopped_while_it_writes_records_each_outcome_once(
    prefix: str,
    settings: Settings,
    cleanup: Cleanup,
    schedule: ScheduleStore,
    publisher: Publisher,
) -> None:
    """Stop right after the last handler, so that the final write meets one in flight:
    every outcome is in the history exactly once (before the fix, a refresh cancelled
    within its commit queued its rows again, or left SQLite locked and lost them)."""
    cmd = command_for(f"{prefix}.stop-writing")
    recorder = Recorder(cmd)
    for round_number in range(3):
        worker = await start_worker(recorder, settings, cleanup, schedule, f"{prefix} stop")
        await publisher.send_many([(cmd(n=n), 0) for n in range(1500)])
        await eventually(partial(handled_all, worker, 1500), 30, "1,500 handled", 0.005)
        await worker.stop(grace_period=1)
        entries = await schedule.history(command_type="Ping", outcome="handled", limit=None)
        assert len(entries) == 1500 * (round_number + 1)
        assert len({entry.message_id for entry in entries}) == len(entries)


def handled_all(worker: Worker, count: int) -> bool:
    return worker.outcomes[Outcome.HANDLED] == count
