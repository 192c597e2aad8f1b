"""The outbox relay as a process (``postdate relay``, ``python -m orders.relay``): an
engine, a :class:`Publisher` and an :class:`OutboxRelay`, run until SIGTERM/SIGINT.

A stop finishes the batch in flight (its rows are marked sent), then logs
``relay.stopped`` with the rows published and failed. With ``POSTDATE_METRICS_PORT`` set
it serves, as a worker does (:mod:`postdate.observe._health`):

* ``/metrics``: ``postdate_outbox_published_total`` and ``postdate_outbox_failed_total``
  (rows confirmed and marked sent; publishes that failed, the row staying pending), and
  ``postdate_outbox_pending`` (rows not yet published, read every
  :data:`PENDING_POLL_SECONDS`);
* ``/healthz``: 200 while the relay's loop keeps passing over the outbox;
* ``/readyz``: 200 when its last pass went through, 503 with the reason otherwise.

:func:`overdue_count` tells when no relay runs: rows due and still not published.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from postdate._clock import to_epoch_ms
from postdate._settings import Settings
from postdate.observe._health import LIVENESS_STALE_SECONDS, Heartbeat, Probes, serve_health
from postdate.observe._logs import get_logger
from postdate.outbox.queries import pending_count
from postdate.outbox.relay import OutboxRelay
from postdate.outbox.schema import not_cancelled, not_held, outbox_table
from postdate.publish._publisher import Publisher
from postdate.schedule.engine import make_engine
from postdate.schedule.store import ScheduleStore

log = get_logger("postdate.relay")

PENDING_POLL_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0  # the longest wait of OutboxRelay.run after a failed pass

PUBLISHED = Counter(
    "postdate_outbox_published",
    "Outbox rows this process published (confirmed by the broker) and marked sent",
)
FAILED = Counter(
    "postdate_outbox_failed",
    "Outbox row publishes that failed (the row stays pending and is tried again)",
)
PENDING = Gauge(
    "postdate_outbox_pending",
    "Outbox rows not yet published, cancelled ones left out "
    f"(read every {PENDING_POLL_SECONDS:.0f} s)",
)

Prepare = Callable[[AsyncEngine], Awaitable[None]]
"""Run on the engine before relaying (e.g. create a service's own tables)."""


@dataclass(frozen=True)
class RelayOptions:
    """What one relay process relays: the outbox in ``database_url`` (an SQLAlchemy async
    URL), ``batch_size`` rows per pass, a pass every ``poll_interval`` s when idle. With
    ``create_tables`` the outbox and schedule tables that are missing are created first;
    ``prepare`` runs next (a service's own tables)."""

    database_url: str
    batch_size: int = 200
    poll_interval: float = 0.5
    create_tables: bool = True
    prepare: Prepare | None = None
    connection_name: str = "postdate-outbox-relay"


@dataclass
class RelayHealth:
    """What ``/healthz`` and ``/readyz`` answer for a relay: its loop's heartbeat, and why
    it is not ready (``starting``, the last pass's error, ``stopping``) or None."""

    stop: asyncio.Event
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    problem: str | None = "starting"

    async def readiness(self) -> str | None:
        """Why the relay is not ready, or None when its last pass went through."""
        return "stopping" if self.stop.is_set() else self.problem


class MonitoredRelay(OutboxRelay):
    """An :class:`OutboxRelay` whose every pass beats ``health``'s heartbeat, counts the
    rows published and failed in the metrics, and says whether it went through.

    Raises:
        InvalidArgument: ``batch_size`` below 1 or ``poll_interval`` not positive.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        health: RelayHealth,
        **options: Any,
    ) -> None:
        super().__init__(session_factory, publisher, **options)
        self.health = health

    async def relay_once(self) -> int:
        """One pass (see :meth:`OutboxRelay.relay_once`), observed.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
            Exception: whatever a hook raised.
        """
        published, failed = self.published, self.failed
        try:
            sent = await super().relay_once()
        except Exception as exc:
            self.health.problem = f"the last pass failed: {exc!r}"
            raise
        finally:
            self.health.heartbeat.last = time.monotonic()
            PUBLISHED.inc(self.published - published)
            FAILED.inc(self.failed - failed)
        self.health.problem = "publishes failing" if self.failed > failed else None
        return sent


def stale_after(poll_interval: float, settings: Settings) -> float:
    """How long a relay's loop may go without a pass before ``/healthz`` says so: a pass
    may wait for confirms (the publish timeout), then the loop up to the longer of the
    poll interval and the backoff after a failure."""
    return (
        LIVENESS_STALE_SECONDS
        + settings.publish_timeout
        + 2 * max(poll_interval, MAX_BACKOFF_SECONDS)
    )


async def run_relay(stop: asyncio.Event, options: RelayOptions, settings: Settings) -> OutboxRelay:
    """Relay the outbox of ``options.database_url`` until ``stop`` is set; the batch in
    flight then is finished. Returns the relay (its ``published`` and ``failed`` counts).

    Raises:
        MetricsPortUnavailable: ``POSTDATE_METRICS_PORT`` cannot be bound (checked first).
        BrokerUnavailable: the broker cannot be reached at start-up.
        TopologyMismatch: the ladder exists with other arguments.
        sqlalchemy.exc.SQLAlchemyError: the database failed while creating tables.
        InvalidArgument: ``batch_size`` below 1 or ``poll_interval`` not positive.
    """
    health = RelayHealth(stop, Heartbeat(stale_after=stale_after(options.poll_interval, settings)))
    async with _observed(health, settings.metrics_port):
        engine = make_engine(options.database_url)
        try:
            return await _relay(engine, health, options, settings)
        finally:
            await engine.dispose()


async def _relay(
    engine: AsyncEngine, health: RelayHealth, options: RelayOptions, settings: Settings
) -> OutboxRelay:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    if options.create_tables:
        await ScheduleStore(sessions).create_tables()
    if options.prepare is not None:
        await options.prepare(engine)
    async with Publisher(settings=settings, connection_name=options.connection_name) as pub:
        relay = MonitoredRelay(
            sessions,
            pub,
            health,
            batch_size=options.batch_size,
            poll_interval=options.poll_interval,
        )
        log.info(
            "relay.started",
            database=engine.url.render_as_string(hide_password=True),
            batch_size=options.batch_size,
            poll_interval=options.poll_interval,
        )
        pending = asyncio.create_task(poll_pending(sessions)) if settings.metrics_port else None
        try:
            await relay.run(health.stop)
        finally:
            await _cancel(pending)
        log.info("relay.stopped", published=relay.published, failed=relay.failed)
        return relay


@asynccontextmanager
async def _observed(health: RelayHealth, port: int | None) -> AsyncIterator[None]:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` (none when None) while
    the block runs; the heartbeat beats on its own until the first pass.

    Raises:
        MetricsPortUnavailable: the port cannot be bound.
    """
    if port is None:
        yield
        return
    server = serve_health(
        port, Probes(health.heartbeat, health.readiness, asyncio.get_running_loop())
    )
    log.info("relay.metrics", port=server.port)
    starting = asyncio.create_task(health.heartbeat.run())
    try:
        yield
    finally:
        await _cancel(starting)
        await server.close()


async def poll_pending(
    sessions: async_sessionmaker[AsyncSession], interval: float = PENDING_POLL_SECONDS
) -> None:
    """Until cancelled: every ``interval`` s, set ``postdate_outbox_pending``. A count that
    cannot be read keeps the last value (logged at debug)."""
    while True:
        try:
            async with sessions() as session:
                PENDING.set(await pending_count(session))
        except Exception as exc:
            log.debug("relay.pending_unread", error=repr(exc))
        await asyncio.sleep(interval)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def run_relay_until_signalled(options: RelayOptions, settings: Settings) -> OutboxRelay:
    """:func:`run_relay` until SIGTERM or SIGINT.

    Raises:
        MetricsPortUnavailable: ``POSTDATE_METRICS_PORT`` cannot be bound.
        BrokerUnavailable: the broker cannot be reached at start-up.
        sqlalchemy.exc.SQLAlchemyError: the database failed while creating tables.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        if not stop.is_set():
            log.info("relay.signalled")
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled)
    try:
        return await run_relay(stop, options, settings)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def overdue_count(session: AsyncSession, due_before: datetime) -> int:
    """Outbox rows due before ``due_before`` and still not published (neither cancelled
    nor held by a reschedule): when that is more than a moment ago, no relay is running.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed, or has no outbox table.
    """
    table = outbox_table
    result = await session.execute(
        select(func.count())
        .select_from(table)
        .where(
            table.c.sent_at.is_(None),
            table.c.due_ms < to_epoch_ms(due_before),
            not_cancelled(),
            not_held(datetime.now(UTC)),
        )
    )
    return int(result.scalar_one())
