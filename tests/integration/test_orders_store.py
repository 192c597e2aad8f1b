"""The order store on SQLite and PostgreSQL: transitions as conditional updates, refunds
once per key, and a pickup racing the expiry reminder (no broker needed)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from orders.commands import ExpireReservation, expire_message_id
from orders.domain import InvalidTransition, OrderNotFound, OrderStatus
from orders.payments import PaymentUnavailable, RecordingGateway
from orders.store import OrderStore, ReminderOutcome
from postdate import DelayError, outbox

HOLD = timedelta(seconds=5)
LATER = timedelta(seconds=10)


async def reserved(store: OrderStore, amount: int = 1000) -> tuple[uuid.UUID, ExpireReservation]:
    order = await store.place(amount)
    order = await store.reserve(order.id, hold=HOLD)
    return order.id, store.command(order_id=order.id, reservation=order.reservation)


async def test_reserve_writes_the_order_and_its_reminder_in_one_transaction(
    store: OrderStore,
) -> None:
    order = await store.place(1999)
    reserved_order = await store.reserve(order.id, hold=timedelta(days=7))
    assert reserved_order.status is OrderStatus.RESERVED
    [row] = await store.upcoming(order.id)
    assert row.message_id == expire_message_id(order.id, 1)
    assert row.due_at == reserved_order.expires_at
    assert row.queue == store.command.queue
    assert row.correlation_id == str(order.id)
    assert row.published_at is None
    with pytest.raises(InvalidTransition, match="it is reserved"):
        await store.reserve(order.id)
    with pytest.raises(OrderNotFound):
        await store.reserve(uuid.uuid4())


async def test_a_failed_reserve_leaves_no_reminder(store: OrderStore) -> None:
    order = await store.place(500)
    with pytest.raises(DelayError):
        await store.reserve(order.id, hold=timedelta(days=365 * 10))
    assert (await store.get(order.id)).status is OrderStatus.PLACED
    async with store.sessions() as session:
        assert await outbox.pending_count(session) == 0


async def test_picked_up_order_is_never_refunded(store: OrderStore) -> None:
    order_id, command = await reserved(store)
    await store.complete(order_id)
    gateway = RecordingGateway()
    expiry = await store.expire(
        command,
        message_id=expire_message_id(order_id, 1),
        attempt=1,
        gateway=gateway,
        now=datetime.now(UTC) + LATER,
    )
    assert expiry.refund is None
    assert expiry.reason == "picked up"
    assert gateway.calls == 0
    assert await store.refunds(order_id) == []
    assert (await store.get(order_id)).status is OrderStatus.COMPLETED


async def test_expiry_refunds_once_however_often_it_runs(store: OrderStore) -> None:
    order_id, command = await reserved(store, 4200)
    key = expire_message_id(order_id, 1)
    now = datetime.now(UTC) + LATER
    gateway = RecordingGateway()
    results = [
        await store.expire(command, message_id=key, attempt=n, gateway=gateway, now=now)
        for n in (1, 2, 3)
    ]
    assert results[0].refund is not None
    assert results[0].refund.amount_cents == 4200
    assert [r.reason for r in results[1:]] == ["already cancelled"] * 2
    [refund] = await store.refunds(order_id)
    assert refund.idempotency_key == key
    assert (await store.get(order_id)).status is OrderStatus.CANCELLED
    outcomes = [entry.outcome for entry in await store.reminder_log(order_id)]
    assert outcomes == [ReminderOutcome.REFUNDED, ReminderOutcome.SKIPPED, ReminderOutcome.SKIPPED]
    with pytest.raises(InvalidTransition, match="reservation expired"):
        await store.complete(order_id)


async def test_a_payment_failure_rolls_back_the_cancel(store: OrderStore) -> None:
    order_id, command = await reserved(store)
    now = datetime.now(UTC) + LATER
    failing = RecordingGateway(fail_rate=1.0)
    with pytest.raises(PaymentUnavailable):
        await store.expire(command, message_id="k", attempt=1, gateway=failing, now=now)
    assert (await store.get(order_id)).status is OrderStatus.RESERVED
    assert await store.refunds(order_id) == []
    expiry = await store.expire(
        command, message_id="k", attempt=2, gateway=RecordingGateway(), now=now
    )
    assert expiry.refund is not None


async def test_an_early_reminder_asks_to_come_back(store: OrderStore) -> None:
    order_id, command = await reserved(store)
    expiry = await store.expire(command, message_id="k", attempt=1, gateway=RecordingGateway())
    assert expiry.refund is None
    assert expiry.retry_at == (await store.get(order_id)).expires_at
    assert (await store.get(order_id)).status is OrderStatus.RESERVED


async def test_stale_and_unknown_reminders_exit_early(store: OrderStore) -> None:
    order_id, _ = await reserved(store)
    now = datetime.now(UTC) + LATER
    gateway = RecordingGateway()
    stale = store.command(order_id=order_id, reservation=7)
    unknown = store.command(order_id=uuid.uuid4(), reservation=1)
    expiry = await store.expire(stale, message_id="a", attempt=1, gateway=gateway, now=now)
    assert expiry.reason.startswith("stale reminder")
    expiry = await store.expire(unknown, message_id="b", attempt=1, gateway=gateway, now=now)
    assert expiry.reason == "order not found"
    assert gateway.calls == 0


async def test_refund_key_is_unique_even_across_calls(store: OrderStore) -> None:
    order_id, _ = await reserved(store)
    gateway = RecordingGateway()
    async with store.sessions() as session, session.begin():
        first = await gateway.refund(
            session, order_id=order_id, amount_cents=1000, idempotency_key="same"
        )
    async with store.sessions() as session, session.begin():
        again = await gateway.refund(
            session, order_id=order_id, amount_cents=1000, idempotency_key="same"
        )
    assert again.replayed
    assert again.id == first.id
    assert len(await store.refunds(order_id)) == 1


async def test_pickup_racing_duplicate_reminders_has_exactly_one_winner(
    store: OrderStore,
) -> None:
    """Each order: a pickup and three deliveries of its reminder at once. Either the pickup
    won (completed, never refunded) or one reminder did (cancelled, refunded once)."""
    orders = [await reserved(store, 100 + n) for n in range(20)]
    now = datetime.now(UTC) + LATER
    gateway = RecordingGateway()

    async def pickup(order_id: uuid.UUID) -> str:
        try:
            await store.complete(order_id)
        except InvalidTransition:
            return "refused"
        return "completed"

    async def remind(order_id: uuid.UUID, command: ExpireReservation, attempt: int) -> str:
        key = expire_message_id(order_id, 1)
        expiry = await store.expire(
            command, message_id=key, attempt=attempt, gateway=gateway, now=now
        )
        return "refunded" if expiry.refund is not None else "skipped"

    async def race(n: int, order_id: uuid.UUID, command: ExpireReservation) -> list[str]:
        contenders = [
            remind(order_id, command, 1),
            pickup(order_id),
            remind(order_id, command, 2),
            remind(order_id, command, 3),
        ]
        if n % 2:  # the pickup starts first for every other order
            contenders[0], contenders[1] = contenders[1], contenders[0]
        outcome = list(await asyncio.gather(*contenders))
        if n % 2:
            outcome[0], outcome[1] = outcome[1], outcome[0]
        return outcome

    results = await asyncio.gather(
        *(race(n, order_id, command) for n, (order_id, command) in enumerate(orders))
    )
    refunds = await store.refunds()
    refunded_orders = [refund.order_id for refund in refunds]
    assert len(refunded_orders) == len(set(refunded_orders))  # never twice
    for (order_id, _), outcome in zip(orders, results, strict=True):
        order = await store.get(order_id)
        if order.status is OrderStatus.COMPLETED:
            assert outcome.count("refunded") == 0
            assert outcome[1] == "completed"
            assert order_id not in refunded_orders
        else:
            assert order.status is OrderStatus.CANCELLED
            assert outcome.count("refunded") == 1
            assert outcome[1] == "refused"
            assert refunded_orders.count(order_id) == 1
    statuses = {(await store.get(order_id)).status for order_id, _ in orders}
    assert statuses == {OrderStatus.COMPLETED, OrderStatus.CANCELLED}  # both sides won races
