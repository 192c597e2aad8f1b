"""The demo: ``make demo`` (``python -m orders.demo``) with a RabbitMQ running.

Sets everything up on its own (a temporary SQLite database, a topology under a unique
prefix, a worker with the schedule store and an outbox relay in this process), places a
few dozen orders, reserves them with the hold compressed to seconds, lets customers pick
up a random part of them before the hold ends (each pickup cancels its reminder, which
the worker then acks as ``cancelled`` without calling the handler), makes the payment
provider fail a share of the refunds, shows live progress and then a table of what every
reminder did, checked against the database, and the timeline of two reminders (one
refunded, one cancelled) from the schedule store. Exits 0 only when every reminder reached
its outcome; removes its broker objects and database either way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aio_pika
import aiormq

from orders.commands import ExpireReservation, expire_command_for, expire_message_id
from orders.domain import InvalidTransition, Order, OrderStatus
from orders.payments import RecordingGateway, Refund
from orders.reminders import Services, build_app
from orders.store import OrderStore, ReminderEntry, ReminderOutcome
from postdate import Outcome, Publisher, RetryPolicy, Settings, Worker, outbox
from postdate._errors import PostdateError
from postdate.broker import _declare as declare
from postdate.broker._connection import redacted
from postdate.broker._registry import registry_topology
from postdate.broker._topology import Topology
from postdate.observe._logs import configure_logging
from postdate.outbox import OutboxRelay
from postdate.schedule import HistoryEntry, ScheduleStore, Timeline, views

REFUNDED = "refunded and cancelled"
RETRIED = "retried then refunded"
CANCELLED = "expiry cancelled"  # by the pickup: the worker acked it, no handler call
EXITED = "exited early"  # the handler ran and found the order picked up (the safety net)
NO_OUTCOME = "no outcome yet"
ACKED_CANCELLED = "acked as cancelled, handler not called"
NOT_PUBLISHED = "cancelled before it was published"


@dataclass(frozen=True)
class Row:
    """One line of the final table, derived from the database."""

    order: Order
    outcome: str
    detail: str
    deliveries: int
    refunds: tuple[Refund, ...]
    handler_calls: int = 0  # entries in the reminder log: one per call of the handler


def outcome_of(
    log: Sequence[ReminderEntry], history: Sequence[HistoryEntry] = ()
) -> tuple[str, str]:
    """What the reminder did, from its log entries (written by the handler) and the
    worker's outcomes in the schedule store (``history``): ``(outcome, detail)``."""
    refunded = [entry for entry in log if entry.outcome is ReminderOutcome.REFUNDED]
    failed = [entry for entry in log if entry.outcome is ReminderOutcome.FAILED]
    skipped = [entry for entry in log if entry.outcome is ReminderOutcome.SKIPPED]
    if refunded:
        if failed:
            return RETRIED, f"{len(failed)} failed attempt(s) before"
        return REFUNDED, ""
    if skipped:
        return EXITED, skipped[0].detail
    if any(entry.outcome == Outcome.CANCELLED for entry in history):
        return CANCELLED, ACKED_CANCELLED
    return NO_OUTCOME, f"{len(failed)} failed attempt(s)" if failed else ""


def check(row: Row) -> list[str]:
    """Why this row disagrees with the database's invariants (empty when it agrees)."""
    order, problems = row.order, []
    key = expire_message_id(order.id, order.reservation)
    if order.status is OrderStatus.COMPLETED:
        if row.refunds:
            problems.append("picked up but refunded")
        if row.outcome not in (CANCELLED, EXITED):
            problems.append(f"picked up but the reminder says {row.outcome!r}")
        if row.outcome == CANCELLED and row.handler_calls:
            problems.append(f"expiry cancelled but its handler ran {row.handler_calls} time(s)")
    elif order.status is OrderStatus.CANCELLED:
        if len(row.refunds) != 1:
            problems.append(f"cancelled with {len(row.refunds)} refunds")
        elif row.refunds[0].idempotency_key != key:
            problems.append(f"refund under key {row.refunds[0].idempotency_key!r}")
        elif row.refunds[0].amount_cents != order.amount_cents:
            problems.append("refund amount differs from the order's")
        if row.outcome not in (REFUNDED, RETRIED):
            problems.append(f"cancelled but the reminder says {row.outcome!r}")
    else:
        problems.append(f"still {order.status.value}")
    return problems


async def table_rows(store: OrderStore, schedule: ScheduleStore, ids: set[uuid.UUID]) -> list[Row]:
    """The table for the orders ``ids`` (a shared database may hold others)."""
    orders = [order for order in await store.all_orders() if order.id in ids]
    refunds = await store.refunds()
    log = await store.reminder_log()
    history = await reminder_history(schedule, orders)
    rows = []
    for order in orders:
        key = expire_message_id(order.id, order.reservation)
        entries = [entry for entry in log if entry.order_id == order.id]
        outcome, detail = outcome_of(entries, history.get(key, ()))
        if outcome == NO_OUTCOME and order.status is OrderStatus.COMPLETED:
            found = await schedule.timeline(key)  # picked up before the relay sent it?
            if found.cancelled_at is not None and found.published_at is None:
                outcome, detail = CANCELLED, NOT_PUBLISHED
        settled = sum(entry.outcome is not ReminderOutcome.FAILED for entry in entries)
        mine = tuple(refund for refund in refunds if refund.order_id == order.id)
        rows.append(Row(order, outcome, detail, settled, mine, len(entries)))
    return rows


async def reminder_history(
    schedule: ScheduleStore, orders: Sequence[Order]
) -> dict[str, list[HistoryEntry]]:
    """The outcomes the worker recorded for the reminders of ``orders``, by message id."""
    keys = {expire_message_id(order.id, order.reservation) for order in orders}
    found: dict[str, list[HistoryEntry]] = {}
    for entry in await schedule.history(command_type=ExpireReservation.command_type, limit=None):
        if entry.message_id in keys:
            found.setdefault(entry.message_id, []).append(entry)
    return found


def print_table(rows: Sequence[Row]) -> None:
    """Print the final table, grouped by what the reminder did."""
    order_by = {CANCELLED: 0, EXITED: 1, REFUNDED: 2, RETRIED: 3, NO_OUTCOME: 4}
    header = f"  {'order':<8}  {'amount':>8}  {'status':<9}  {'reminder':<22}  detail"
    print(header)
    print("  " + "-" * (len(header) + 12))
    for row in sorted(rows, key=lambda r: (order_by[r.outcome], str(r.order.id))):
        amount = f"{row.order.amount_cents / 100:.2f}"
        details = [f"refund #{refund.id}" for refund in row.refunds]
        details += [row.detail] if row.detail else []
        print(
            f"  {str(row.order.id)[:8]:<8}  {amount:>8}  {row.order.status.value:<9}  "
            f"{row.outcome:<22}  {'; '.join(details)}"
        )


def print_timeline(timeline: Timeline, title: str) -> None:
    """Print what the schedule store knows of one reminder, oldest first."""
    print(f"  timeline of {title}: {timeline.type} {timeline.message_id}")
    events: list[tuple[datetime, str, str]] = []
    if timeline.scheduled_at is not None:
        events.append((timeline.scheduled_at, "scheduled", "in the reserve's transaction"))
    if timeline.published_at is not None:
        events.append((timeline.published_at, "published", "by the outbox relay"))
    if timeline.cancelled_at is not None:
        events.append((timeline.cancelled_at, "cancel", timeline.cancel_reason))
    if timeline.due_at is not None:
        events.append((timeline.due_at, "due", ""))
    for entry in timeline.outcomes:
        note = f"attempt {entry.attempt}"
        if timeline.due_at is not None:
            after = (entry.at - timeline.due_at).total_seconds()
            note += f", {abs(after):.3f} s {'after' if after >= 0 else 'before'} due"
        detail = entry.detail if len(entry.detail) <= 60 else entry.detail[:57] + "..."
        events.append((entry.at, f"-> {entry.outcome}", f"{note}: {detail or 'ok'}"))
    for at, what, note in sorted(events, key=lambda event: event[0]):
        print(f"    {at:%H:%M:%S.%f}"[:-3] + f" UTC  {what:<12}  {note}".rstrip())


async def delete_topology(url: str, topology: Topology) -> None:
    """Delete the demo's queues and exchanges on a connection of its own."""
    connection = await aio_pika.connect(url)
    try:
        await declare.delete_topology(connection, topology)
    finally:
        await connection.close()


class Demo:
    """One demo run from the parsed command line: its store, worker, topology and results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed: int = args.seed if args.seed is not None else random.randrange(10_000)
        self.random = random.Random(self.seed)
        self.hold = timedelta(seconds=args.hold)
        self.prefix = f"demo{uuid.uuid4().hex[:8]}"
        self.settings = Settings.load(prefix=self.prefix, concurrency=16, grace_period=5)
        self.tmp = tempfile.mkdtemp(prefix="postdate-demo-")
        self.database_url = args.database_url or f"sqlite+aiosqlite:///{self.tmp}/orders.db"
        command = expire_command_for(f"{self.prefix}.orders.expire_reservation")
        self.store = OrderStore.from_url(self.database_url, command=command, hold=self.hold)
        self.gateway = RecordingGateway(fail_rate=args.fail_rate, seed=self.seed)
        # Cancels, outcomes and timelines, on the orders database (the store's engine).
        self.schedule = self.store.schedule()
        retries = RetryPolicy(max_attempts=12, tiers=(timedelta(seconds=1), timedelta(seconds=2)))
        self.app = build_app(Services(self.store, self.gateway), command=command, retries=retries)
        # The registry its worker writes to goes with the rest.
        self.topology = self.app.topology(
            self.prefix, self.settings.delivery_limit
        ) + registry_topology(self.prefix)
        self.worker = Worker(
            self.app, self.settings, name=f"orders-demo-{os.getpid()}", schedule=self.schedule
        )
        self.started = time.monotonic()
        self.pickups: dict[uuid.UUID, str] = {}
        self.ids: set[uuid.UUID] = set()

    def say(self, text: str) -> None:
        """Print ``text`` with the seconds since the demo started."""
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", flush=True)

    async def run(self) -> int:
        """Run the scenario with the worker and relay going; return the exit status.

        0 when the table matches the database and every reminder settled, else 1.
        """
        args = self.args
        print("postdate demo: in-store pickup reservations that expire")
        print(f"  broker    {redacted(self.settings.url)} (prefix {self.prefix})")
        print(f"  database  {self.database_url}")
        print(
            f"  {args.orders} orders, hold {args.hold:g} s (production: 7 days), "
            f"~{args.pickup_share:.0%} picked up, ~{args.fail_rate:.0%} of refunds fail "
            f"transiently, seed {self.seed}"
        )
        await self.store.create_schema()
        await self.worker.start()
        self.say(
            f"worker consuming {', '.join(self.app.queues())} with the schedule store; "
            "outbox relay running"
        )
        try:
            async with Publisher(settings=self.settings, connection_name="orders-demo") as pub:
                relay = OutboxRelay(self.store.sessions, pub, poll_interval=0.2)
                stop = asyncio.Event()
                relaying = asyncio.create_task(relay.run(stop))
                try:
                    settled = await self.scenario(relay)
                finally:
                    stop.set()
                    await relaying
        finally:
            await self.worker.stop()
        return await self.report(settled)

    async def scenario(self, relay: OutboxRelay) -> bool:
        """Place and reserve the orders, pick some up, and wait until every reminder
        settled or ``--timeout`` passed; returns whether they settled."""
        args = self.args
        orders = [
            await self.store.place(self.random.randrange(500, 20_000)) for _ in range(args.orders)
        ]
        self.ids = {order.id for order in orders}
        self.say(f"placed {len(orders)} orders")
        spread = 1.5 / len(orders)  # reservations trickle in over a second and a half
        reserved = []
        for order in orders:
            reserved.append(await self.store.reserve(order.id))
            relay.notify()
            await asyncio.sleep(spread)
        self.say(
            f"reserved {len(orders)}: each reserve wrote the order change and its reminder "
            "in one transaction; the relay publishes the reminders"
        )
        await self.print_overview(orders[0])
        picked = round(len(orders) * args.pickup_share)
        if args.pickup_share > 0:  # at least one, so that one reminder is cancelled
            picked = max(1, picked)
        chosen = self.random.sample(reserved, picked)
        pickups = [
            asyncio.create_task(self.pick_up(order, self.before_hold_ends(order)))
            for order in chosen
        ]
        deadline = time.monotonic() + args.timeout
        settled = False
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            settled = await self.progress()
            if settled and all(task.done() for task in pickups):
                break
        await asyncio.gather(*pickups)
        return settled

    def before_hold_ends(self, order: Order) -> float:
        """Seconds from now to a random moment at least half a second before the hold ends."""
        assert order.expires_at is not None
        left = (order.expires_at - datetime.now(UTC)).total_seconds()
        return max(0.0, left - self.random.uniform(0.5, max(0.6, self.args.hold - 0.5)))

    async def pick_up(self, order: Order, after: float) -> None:
        """After ``after`` seconds, complete ``order`` (which cancels its reminder in the
        same transaction) and note whether it was in time."""
        await asyncio.sleep(after)
        try:
            await self.store.complete(order.id)
            self.pickups[order.id] = "picked up"
        except InvalidTransition as exc:
            self.pickups[order.id] = f"too late: {exc}"

    async def print_overview(self, example: Order) -> None:
        """Show the outbox's reminders by due second, and what is coming up for ``example``."""
        async with self.store.sessions() as session:
            counts = await views.overview(session, timedelta(seconds=1))
        self.say("upcoming reminders by due second (queried from the schedule):")
        for bucket in (count for count in counts if count.outcome == views.SCHEDULED):
            bar = "#" * bucket.count
            print(f"          {bucket.start:%H:%M:%S} UTC  {bucket.count:3d} {bar}", flush=True)
        for row in await self.store.upcoming(example.id):
            state = "published" if row.published_at else "not yet published"
            self.say(
                f"coming up for order {str(example.id)[:8]}: {row.type} "
                f"at {row.due_at:%H:%M:%S.%f}"[:-3]
                + f" UTC ({state}, id {row.message_id})"
            )

    async def progress(self) -> bool:
        """Print one progress line; true once every reminder has an outcome and the
        outbox is drained."""
        rows = await table_rows(self.store, self.schedule, self.ids)
        async with self.store.sessions() as session:
            pending = await outbox.pending_count(session)
        statuses = Counter(row.order.status for row in rows)
        outcomes = Counter(row.outcome for row in rows)
        self.say(
            f"outbox pending {pending:2d} | reserved {statuses[OrderStatus.RESERVED]:2d} "
            f"completed {statuses[OrderStatus.COMPLETED]:2d} "
            f"cancelled {statuses[OrderStatus.CANCELLED]:2d} | reminders: "
            f"{outcomes[CANCELLED]} cancelled, {outcomes[EXITED]} exited early, "
            f"{outcomes[REFUNDED]} refunded, "
            f"{outcomes[RETRIED]} retried then refunded | "
            f"refund failures so far {self.gateway.failures}"
        )
        return all(row.outcome != NO_OUTCOME for row in rows) and pending == 0

    async def report(self, settled: bool) -> int:
        """Print the table and totals, check them against the database and the worker,
        then print two reminders' timelines; return 0 when all agree (and ``settled``),
        else 1."""
        rows = await table_rows(self.store, self.schedule, self.ids)
        print()
        print_table(rows)
        problems = [f"{str(row.order.id)[:8]}: {p}" for row in rows for p in check(row)]
        failed_log = sum(
            entry.outcome is ReminderOutcome.FAILED and entry.order_id in self.ids
            for entry in await self.store.reminder_log()
        )
        if failed_log != self.gateway.failures:
            problems.append(
                f"{failed_log} failed attempts logged, gateway failed {self.gateway.failures}"
            )
        outcomes = self.worker.outcomes
        if outcomes[Outcome.POISONED]:
            problems.append(f"{outcomes[Outcome.POISONED]} reminder(s) parked as poison")
        late = [o for o, what in self.pickups.items() if what != "picked up"]
        completed = {row.order.id for row in rows if row.order.status is OrderStatus.COMPLETED}
        picked = {o for o, what in self.pickups.items() if what == "picked up"}
        if completed != picked:
            problems.append(f"{len(picked)} pickups succeeded but {len(completed)} completed")
        history = await reminder_history(self.schedule, [row.order for row in rows])
        recorded = sum(e.outcome == Outcome.CANCELLED for es in history.values() for e in es)
        if recorded != outcomes[Outcome.CANCELLED]:
            problems.append(
                f"worker acked {outcomes[Outcome.CANCELLED]} as cancelled, "
                f"the schedule store recorded {recorded}"
            )
        counts = Counter(row.outcome for row in rows)
        print()
        print(
            f"  {len(rows)} orders: {counts[CANCELLED]} expiry cancelled (picked up), "
            f"{counts[EXITED]} exited early (picked up), "
            f"{counts[REFUNDED]} refunded and cancelled, {counts[RETRIED]} retried then "
            f"refunded; {self.gateway.failures} refund calls failed transiently, "
            f"{len(late)} pickup(s) came too late"
        )
        print(
            "  worker: "
            + ", ".join(f"{outcome.value} {n}" for outcome, n in sorted(outcomes.items()))
        )
        if not settled:
            problems.append(f"not every reminder reached its outcome within {self.args.timeout} s")
        if problems:
            print("  table does NOT match the database:")
            for problem in problems:
                print(f"    - {problem}")
        else:
            print(
                "  table matches the database: every picked-up order completed and never "
                "refunded, no handler called for a cancelled expiry; every expired order "
                "cancelled with exactly one refund"
            )
        await self.print_timelines(rows)
        return 1 if problems else 0

    async def print_timelines(self, rows: Sequence[Row]) -> None:
        """Print the schedule store's timeline of one refunded reminder (one that was
        retried, if any) and of one the worker acked as cancelled after a pickup."""
        refunded = [row for row in rows if row.outcome == RETRIED]
        refunded += [row for row in rows if row.outcome == REFUNDED]
        cancelled = [row for row in rows if row.detail == ACKED_CANCELLED]
        cancelled += [row for row in rows if row.outcome == CANCELLED]
        for chosen, what in ((refunded, "expired, refunded"), (cancelled, "picked up")):
            if not chosen:
                continue
            order = chosen[0].order
            key = expire_message_id(order.id, order.reservation)
            print()
            print_timeline(await self.schedule.timeline(key), f"order {str(order.id)[:8]} ({what})")

    async def close(self) -> None:
        """Remove the demo's broker objects (best effort), close the store, and delete
        the temporary directory unless ``--keep``."""
        try:
            await delete_topology(self.settings.url, self.topology)
        except (PostdateError, aiormq.exceptions.AMQPError, OSError) as exc:
            print(f"  could not remove the demo's broker objects: {exc}", file=sys.stderr)
        await self.store.close()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The demo's command-line arguments, checked.

    Raises:
        SystemExit: an argument is invalid (argparse prints why and exits with 2).
    """
    parser = argparse.ArgumentParser(prog="python -m orders.demo", description=__doc__)
    parser.add_argument("--orders", type=int, default=36, help="orders to place (default 36)")
    parser.add_argument("--hold", type=float, default=5.0, help="hold period in seconds (5)")
    parser.add_argument(
        "--pickup-share", type=float, default=0.4, help="share picked up in time (0.4)"
    )
    parser.add_argument(
        "--fail-rate", type=float, default=0.3, help="share of refund calls that fail (0.3)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up after (60 s)")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary database")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.hold <= 1 or not 0 <= args.pickup_share <= 1:
        parser.error("need --orders >= 1, --hold > 1 and --pickup-share within [0, 1]")
    if not 0 <= args.fail_rate < 1:
        parser.error("--fail-rate must be within [0, 1)")
    return args


async def main_async(argv: Sequence[str] | None = None) -> int:
    """Run the demo and clean up after it; returns the exit status (2: a postdate error)."""
    configure_logging("WARNING")
    demo = Demo(parse(argv))
    try:
        return await demo.run()
    except PostdateError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 2
    finally:
        await demo.close()


def main() -> None:
    """Entry point of ``python -m orders.demo``.

    Raises:
        SystemExit: always, with the demo's exit status.
    """
    sys.exit(asyncio.run(main_async()))


if __name__ == "__main__":
    main()
