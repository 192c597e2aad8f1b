"""The reservation service end to end, on SQLite and PostgreSQL: reserve (order change and
reminder in one transaction), the outbox relay, the broker's delay ladder, and the expiry
handler in a real worker. Every reminder is delivered twice and some refunds fail once.

The worker here has no schedule store, so the cancels that pickups write are not checked:
the handler's state check is the safety net that exits early. With the store, see
test_orders_cancel.py."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from orders.commands import ExpireReservation, expire_message_id
from orders.domain import OrderStatus
from orders.payments import PaymentUnavailable, RecordingGateway, Refund
from orders.reminders import Services, build_app
from orders.store import OrderStore, ReminderOutcome
from postdate import Outcome, Publisher, RetryPolicy, Settings, Worker, outbox
from postdate.outbox import OutboxRelay, envelope_for_row
from tests.helpers import Cleanup, eventually

HOLD = timedelta(seconds=2)
FAST = RetryPolicy(max_attempts=5, tiers=(timedelta(seconds=1),))


class FailsOnce(RecordingGateway):
    """Fails the first refund call for each of ``keys`` (the provider was down)."""

    def __init__(self, keys: set[str]) -> None:
        super().__init__()
        self.keys = set(keys)

    async def refund(
        self,
        session: AsyncSession,
        *,
        order_id: uuid.UUID,
        amount_cents: int,
        idempotency_key: str,
    ) -> Refund:
        if idempotency_key in self.keys:
            self.keys.discard(idempotency_key)
            raise PaymentUnavailable(f"down for {idempotency_key}")
        return await super().refund(
            session, order_id=order_id, amount_cents=amount_cents, idempotency_key=idempotency_key
        )


async def test_pickups_exit_early_and_expired_orders_are_refunded_exactly_once(
    store: OrderStore,
    expire_command: type[ExpireReservation],
    settings: Settings,
    cleanup: Cleanup,
    publisher: Publisher,
    relay: OutboxRelay,
) -> None:
    placed = [await store.place(1000 + n) for n in range(8)]
    keys = {order.id: expire_message_id(order.id, 1) for order in placed}
    picked, expired, flaky = placed[:3], placed[3:], placed[3:5]
    gateway = FailsOnce({keys[order.id] for order in flaky})
    app = build_app(Services(store, gateway), command=expire_command, retries=FAST)
    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    worker = Worker(app, settings, name="pytest orders worker")
    await worker.start()
    try:
        for order in placed:
            await store.reserve(order.id, hold=HOLD)
        relay.notify()

        async def relayed() -> bool:
            async with store.sessions() as session:
                return await outbox.pending_count(session) == 0

        # Published first: the relay skips a reminder whose pickup's cancel came before.
        await eventually(relayed, 10, "the relay to publish every reminder", interval=0.1)
        for order in picked:  # the customer comes before the hold ends
            await store.complete(order.id)
        async with store.sessions() as session:  # deliver every reminder a second time
            for order in placed:
                row = await outbox.get(session, keys[order.id])
                assert row is not None
                assert row.relayed
                assert await publisher.publish_each([envelope_for_row(row)]) == [None]

        async def settled() -> bool:
            log = await store.reminder_log()
            done = [entry.order_id for entry in log if entry.outcome is not ReminderOutcome.FAILED]
            return all(done.count(order.id) == 2 for order in placed)

        await eventually(settled, 20, "two settled deliveries of every reminder", interval=0.1)
    finally:
        await worker.stop()

    refunds = await store.refunds()
    for order in picked:
        assert (await store.get(order.id)).status is OrderStatus.COMPLETED
        log = await store.reminder_log(order.id)
        assert [(e.outcome, e.detail) for e in log] == [(ReminderOutcome.SKIPPED, "picked up")] * 2
    assert {refund.order_id for refund in refunds} == {order.id for order in expired}
    for order in expired:
        assert (await store.get(order.id)).status is OrderStatus.CANCELLED
        [refund] = [refund for refund in refunds if refund.order_id == order.id]
        assert refund.idempotency_key == keys[order.id]
        assert refund.amount_cents == order.amount_cents
        outcomes = [entry.outcome for entry in await store.reminder_log(order.id)]
        if order in flaky:  # retried then refunded; the failed attempt's log entry is
            # written after its rollback, so a concurrent duplicate's refund may precede it
            assert outcomes.count(ReminderOutcome.FAILED) == 1
        assert outcomes.count(ReminderOutcome.REFUNDED) == 1
        assert outcomes[-1] is ReminderOutcome.SKIPPED  # the duplicate exited early
    assert worker.outcomes[Outcome.HANDLED] == len(expired)
    assert worker.outcomes[Outcome.SKIPPED] == 2 * len(picked) + len(expired)
    assert worker.outcomes[Outcome.RETRIED] == len(flaky)
    assert worker.outcomes[Outcome.POISONED] == 0
