"""The outbox as data, on SQLite and PostgreSQL: rows commit or roll back with the caller's
transaction, and the schedule stays queryable after relaying (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from orders.commands import ExpireReservation
from orders.store import OrderStore
from postdate import DelayError, InvalidArgument, outbox
from postdate.outbox import outbox_table
from postdate.schedule import ScheduleStore

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)  # in the future: "upcoming" from now
ORDER_A = "a0000000-0000-0000-0000-00000000000a"
ORDER_B = "b0000000-0000-0000-0000-00000000000b"


def command(store: OrderStore, order: str) -> ExpireReservation:
    return store.command.model_validate({"order_id": order})


async def test_rows_commit_and_roll_back_with_the_transaction(store: OrderStore) -> None:
    class Boom(Exception):
        pass

    async def change_then_fail() -> None:
        async with store.sessions() as session, session.begin():
            await outbox.schedule(session, command(store, ORDER_A), delay=60, message_id="gone")
            raise Boom

    with pytest.raises(Boom):
        await change_then_fail()
    async with store.sessions() as session, session.begin():
        message_id = await outbox.schedule(session, command(store, ORDER_A), delay=60)
    async with store.sessions() as session:
        assert await outbox.get(session, "gone") is None
        row = await outbox.get(session, message_id)
        assert row is not None
        assert not row.relayed
        assert await outbox.pending_count(session) == 1


async def test_schedule_refuses_what_the_ladder_cannot_deliver(store: OrderStore) -> None:
    async with store.sessions() as session, session.begin():
        with pytest.raises(DelayError, match="maximum"):
            await outbox.schedule(session, command(store, ORDER_A), delay=timedelta(days=4000))
        with pytest.raises(DelayError, match="naive"):
            await outbox.schedule(session, command(store, ORDER_A), at=datetime(2030, 1, 1))
        with pytest.raises(DelayError, match="negative"):
            await outbox.schedule(session, command(store, ORDER_A), delay=-1)
        with pytest.raises(DelayError):
            await outbox.schedule_many(session, [(command(store, ORDER_A), -5)])
        assert await outbox.pending_count(session) == 0


async def test_a_message_id_is_scheduled_once(store: OrderStore) -> None:
    async with store.sessions() as session, session.begin():
        await outbox.schedule(session, command(store, ORDER_A), delay=1, message_id="k")
    with pytest.raises(IntegrityError):
        async with store.sessions() as session, session.begin():
            await outbox.schedule(session, command(store, ORDER_A), delay=1, message_id="k")


async def test_upcoming_and_overview_include_relayed_rows(store: OrderStore) -> None:
    async with store.sessions() as session, session.begin():
        for minutes in (0, 10, 70, 75, 200):
            await outbox.schedule(
                session,
                command(store, ORDER_A),
                at=T0 + timedelta(minutes=minutes),
                correlation_id=ORDER_A,
            )
        ids_b = await outbox.schedule_many(
            session,
            [(command(store, ORDER_B), T0 + timedelta(minutes=m)) for m in (5, 65)],
            correlation_id=ORDER_B,
        )
        past = await outbox.schedule(session, command(store, ORDER_A), at=datetime.now(UTC))
    async with store.sessions() as session, session.begin():  # as if relayed
        await session.execute(
            update(outbox_table)
            .where(outbox_table.c.message_id.in_([*ids_b, past]))
            .values(sent_at=datetime.now(UTC))
        )

    schedule = ScheduleStore(store.sessions)
    coming_a = await schedule.upcoming(correlation_id=ORDER_A)
    assert [row.due_at - T0 for row in coming_a] == [
        timedelta(minutes=m) for m in (0, 10, 70, 75, 200)
    ]
    coming_b = await schedule.upcoming(correlation_id=ORDER_B)
    assert [row.message_id for row in coming_b] == ids_b
    assert all(row.published_at is not None for row in coming_b)
    window = await schedule.upcoming(
        after=T0 + timedelta(minutes=6), before=T0 + timedelta(minutes=71)
    )
    assert [row.due_at - T0 for row in window] == [timedelta(minutes=m) for m in (10, 65, 70)]

    hourly = await schedule.overview(timedelta(hours=1), after=T0)
    assert [(b.start - T0, b.outcome, b.count) for b in hourly] == [
        (timedelta(0), "scheduled", 3),
        (timedelta(hours=1), "scheduled", 3),
        (timedelta(hours=3), "scheduled", 1),
    ]
    everything = await schedule.overview(timedelta(days=1))
    assert sum(b.count for b in everything) == 8  # the relayed one due now as well
    assert everything[0].start.hour == 0  # days start at midnight UTC
    with pytest.raises(InvalidArgument, match="bucket"):
        await schedule.overview(timedelta(0))
    async with store.sessions() as session:
        assert (await outbox.get(session, past)) is not None
