"""What every fault test counts: sent, confirmed, handled, lost, duplicated, early, and
lateness beyond the fault; and where the commands are when some are missing."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractConnection

from postdate import Command, Consumer, Context, Settings, Worker
from postdate.broker._declare import delete_topology
from postdate.broker._topology import Names
from tests.helpers import derive, queue_depth


class Tick(Command, queue="postdate-faults.tick"):
    """The command fault tests schedule: a number, and a body of realistic size."""

    n: int
    payload: str = "x" * 64


@dataclass
class Ledger:
    """The books of one fault test: what was sent and confirmed, what handlers saw."""

    sent: int = 0
    confirmed: set[str] = field(default_factory=set)  # message ids the broker confirmed
    # (message id, handled at, due at) in epoch seconds, the due time as the handler saw it
    handled: list[tuple[str, float, float]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self, command: type[Tick]) -> Consumer:
        """A consumer app whose handler records every delivery of ``command``."""
        app = Consumer()

        @app.handler(command)
        async def record(tick: Tick, context: Context) -> None:
            self.handled.append((context.message_id, time.time(), context.due_at.timestamp()))
            self.changed.set()

        return app

    def missing(self) -> set[str]:
        """Confirmed commands no handler has seen yet."""
        return self.confirmed - {message_id for message_id, _, _ in self.handled}

    async def wait_all(self, timeout: float) -> None:
        """Wait until every confirmed command was handled, or ``timeout`` s passed."""
        deadline = time.monotonic() + timeout
        while self.missing() and time.monotonic() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break

    def report(self, fault_ended: float) -> Report:
        """The counts; lateness beyond the fault counts from the later of a command's due
        time and the moment the fault ended."""
        first_seen: dict[str, tuple[float, float]] = {}
        for message_id, at, due in self.handled:
            first_seen.setdefault(message_id, (at, due))
        seen = Counter(message_id for message_id, _, _ in self.handled)
        beyond = [at - max(due, fault_ended) for at, due in first_seen.values()]
        early = sum(1 for message_id, at, due in self.handled if at < due)
        return Report(
            sent=self.sent,
            confirmed=len(self.confirmed),
            handled=len(first_seen),
            lost=len(self.missing()),
            duplicated=sum(count - 1 for count in seen.values()),
            early=early,
            beyond_p50=statistics.median(beyond) if beyond else 0.0,
            beyond_max=max(beyond, default=0.0),
            beyond_1s=sum(1 for late in beyond if late > 1.0),
        )


@dataclass(frozen=True)
class Report:
    """A fault test's counts, printed in one line."""

    sent: int
    confirmed: int
    handled: int
    lost: int
    duplicated: int
    early: int
    beyond_p50: float
    beyond_max: float
    beyond_1s: int

    def line(self, name: str) -> str:
        """``name: sent=... confirmed=... ...`` for the test's output."""
        return (
            f"{name}: sent={self.sent} confirmed={self.confirmed} handled={self.handled} "
            f"lost={self.lost} duplicated={self.duplicated} early={self.early} "
            f"late_beyond_fault_p50={self.beyond_p50:.2f}s max={self.beyond_max:.2f}s "
            f"over_1s={self.beyond_1s}"
        )


async def whereabouts(connection: AbstractConnection, prefix: str, queue: str) -> dict[str, int]:
    """Messages ready per ladder level and in the command queue, where there are any."""
    names = Names(prefix)
    places = [names.delay_queue(level) for level in range(28)]
    places += [queue, f"{queue}.poison", names.unroutable]
    depths = {}
    for place in places:
        try:
            depth = await queue_depth(connection, place)
        except Exception:  # a missing queue says something too
            depth = -1
        if depth:
            depths[place] = depth
    return depths


@dataclass
class Run:
    """One fault test's worker side: its settings, its command class, its books."""

    settings: Settings
    tick: type[Tick]
    ledger: Ledger
    keep_queues: bool = False  # set on a failure worth looking into

    @property
    def prefix(self) -> str:
        """The prefix of every broker object of this run."""
        return self.settings.prefix


def new_prefix() -> str:
    """A fresh prefix for one fault test's broker objects."""
    return f"f{uuid.uuid4().hex[:8]}"


def tick_for(prefix: str) -> type[Tick]:
    """The ``Tick`` class a run under ``prefix`` schedules (its own command queue)."""
    return derive(Tick, f"{prefix}.tick")


@contextlib.asynccontextmanager
async def running_worker(
    node_url: str,
    what: str,
    *,
    worker_url: str | None = None,
    prefix: str | None = None,
    **settings: object,
) -> AsyncIterator[Run]:
    """A worker recording every ``Tick`` into the run's ledger, under ``prefix`` (default
    a fresh one) on the fault node (reached at ``worker_url`` when given, e.g. through a
    proxy). Stops it afterwards and deletes what it declared, unless the run says to keep
    the queues."""
    prefix = prefix or new_prefix()
    run = Run(
        Settings.load(prefix=prefix, rabbitmq_url=worker_url or node_url, **settings),
        tick_for(prefix),
        Ledger(),
    )
    app = run.ledger.app(run.tick)
    worker = Worker(app, run.settings, name=f"faults {what} worker {prefix}")
    await worker.start()
    try:
        yield run
    finally:
        await worker.stop(grace_period=2)
        if not run.keep_queues:
            connection = await aio_pika.connect(node_url)
            try:
                await delete_topology(connection, app.topology(prefix, run.settings.delivery_limit))
            finally:
                await connection.close()
