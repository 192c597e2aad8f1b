"""The worker: consumes a `Consumer` app's queues until told to stop.

One connection consumes, another publishes (retry, poison and follow-up copies), so
publisher flow control never stalls deliveries. Both are robust: after a dropped
connection or a broker restart, aio-pika reopens the channel and resumes the consumers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections import Counter
from contextlib import suppress
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from postdate._errors import CommandDefinitionError
from postdate._outcomes import Outcome
from postdate._settings import Settings
from postdate.broker._connection import connect
from postdate.broker._declare import declare_topology
from postdate.broker._registry import register
from postdate.consume import _heap as heap
from postdate.consume._catch_all import deliver_parked_commands, watch_unroutable
from postdate.consume._consumer import Consumer
from postdate.consume._consuming import (
    Consumers,
    OnMessage,
    delivery_callback,
    is_connected,
    is_consuming,
    start_consuming,
)
from postdate.consume._dispatch import Dispatcher
from postdate.observe import _metrics as metrics
from postdate.observe._health import (
    POISON_POLL_SECONDS,
    HealthServer,
    Heartbeat,
    Probes,
    poll_poison_depths,
    serve_health,
)
from postdate.observe._logs import get_logger
from postdate.parking._unroutable import UNROUTABLE_POLL_SECONDS
from postdate.publish._publisher import Publisher

if TYPE_CHECKING:  # the schedule needs the sql extra; loaded only when configured
    from postdate.schedule import CancelWatch, ScheduleStore

log = get_logger(__name__)


class Worker:
    """Runs ``app`` against the broker in ``settings``.

    ``prefetch`` bounds deliveries held by this worker, ``concurrency`` the handlers
    running at once. Retry, poison and follow-up copies go out through ``publisher``:
    one of its own by default; a given one must be started, and is not closed, by the
    caller. :meth:`stop` stops consuming, lets running handlers finish within
    ``grace_period`` seconds, and leaves everything else unacked for redelivery.

    With ``settings.metrics_port`` set, it serves ``/metrics``, ``/healthz`` and
    ``/readyz`` there (see :mod:`postdate.observe._health`) and reads the depth of its queues'
    poison queues every ``poison_poll_seconds``. Every ``unroutable_poll_seconds`` it
    looks at the catch-all queue and sends on what waits there for its queues
    (:mod:`postdate.consume._catch_all`). Both intervals are read at start.

    With a ``schedule`` store (or ``settings.schedule_url``), cancelled commands are acked
    as ``cancelled`` without calling their handler, and every outcome is recorded there.
    """

    def __init__(
        self,
        app: Consumer,
        settings: Settings | None = None,
        *,
        name: str | None = None,
        publisher: Publisher | None = None,
        schedule: ScheduleStore | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or Settings.load()
        self.name = name or f"postdate-worker-{socket.gethostname()}-{os.getpid()}"
        # A publisher of its own needs no ladder declaration: start() declares it with
        # the rest of the app's topology.
        self._owns_publisher = publisher is None
        self.publisher = publisher or Publisher(
            settings=self.settings, declare=False, connection_name=f"{self.name}-publish"
        )
        self._stopping = asyncio.Event()
        self.dispatcher = Dispatcher(
            app, self.publisher, asyncio.Semaphore(self.settings.concurrency), self._stopping
        )
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._consumers: Consumers = []
        self._in_flight: set[asyncio.Task[object]] = set()
        self._stopped = asyncio.Event()
        self._health: HealthServer | None = None
        self._heartbeat = Heartbeat()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._poison_poller: asyncio.Task[None] | None = None
        self.poison_poll_seconds = POISON_POLL_SECONDS
        self._unroutable_watch: asyncio.Task[None] | None = None
        url = self.settings.schedule_url
        self._owns_schedule = schedule is None and url is not None
        self.schedule = _store_at(url) if schedule is None and url else schedule
        self._cancel_watch: CancelWatch | None = None
        self.unroutable_poll_seconds = UNROUTABLE_POLL_SECONDS

    @property
    def metrics_port(self) -> int | None:
        """Where /metrics, /healthz and /readyz are served (``POSTDATE_METRICS_PORT``;
        the bound port when 0 was asked for), or None."""
        return None if self._health is None else self._health.port

    @property
    def outcomes(self) -> Counter[Outcome]:
        """How many deliveries ended in each outcome since this worker was made."""
        return self.dispatcher.outcomes

    async def start(self) -> None:
        """Connect, declare the app's topology and start consuming.

        The metrics port is bound first: a busy one fails before anything is opened or
        any hook runs. A start that fails later closes what it opened (connections,
        metrics server) and runs the shutdown hooks before it raises.

        Raises:
            MetricsPortUnavailable: the metrics port cannot be bound.
            BrokerUnavailable: the broker cannot be reached.
            TopologyMismatch: a queue exists with other arguments.
            CommandDefinitionError: the app has no handlers.
        """
        if not self.app.registrations:
            raise CommandDefinitionError("the consumer app has no handlers: nothing to consume")
        self._serve_health()
        try:
            await self._start()
        except BaseException:
            await self.stop(grace_period=0)
            raise
        log.info("worker.started", worker=self.name, queues=sorted(self.app.queues()))

    def _serve_health(self) -> None:
        """Serve the metrics port, if one is set (and not served yet).

        Raises:
            MetricsPortUnavailable: the port cannot be bound.
        """
        port = self.settings.metrics_port
        if port is None or self._health is not None:
            return
        probes = Probes(self._heartbeat, self.readiness, asyncio.get_running_loop())
        self._health = serve_health(port, probes)
        self._heartbeat_task = asyncio.create_task(self._heartbeat.run())
        log.info("worker.metrics", port=self.metrics_port)

    async def _start(self) -> None:
        for hook in self.app.startup_hooks:
            await hook()
        if self._owns_publisher:
            await self.publisher.start()
        if self.schedule is not None:
            self._cancel_watch = self.schedule.watch(self.name)
            await self._cancel_watch.start()
            self.dispatcher.schedule = self._cancel_watch
        self._connection = await connect(
            self.settings.url,
            name=self.name,
            attempts=self.settings.connect_attempts,
            attempt_timeout=self.settings.connect_timeout,
        )
        metrics.track_connected(self, lambda: is_connected(self._connection))
        topology = self.app.topology(self.settings.prefix, self.settings.delivery_limit)
        await declare_topology(self._connection, topology)
        await self._register_queues()
        await deliver_parked_commands(self._connection, self.publisher, self.app.queues())
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self.settings.prefetch)
        await start_consuming(
            self._channel, topology, self._delivery_callback, self._consumers, self.app.queues()
        )
        self._unroutable_watch = asyncio.create_task(
            watch_unroutable(
                self._connection,
                self.publisher,
                self.settings.prefix,
                self.app.queues(),
                self.unroutable_poll_seconds,
            )
        )
        if self._health is not None:
            self._poison_poller = asyncio.create_task(
                poll_poison_depths(self._connection, self.app.queues(), self.poison_poll_seconds)
            )

    async def readiness(self) -> str | None:
        """Why this worker cannot take deliveries now, or None when it can.

        Read from the connection and channel themselves, so it follows aio-pika's
        reconnects: ``"stopping"`` once :meth:`stop` began, ``"not connected"`` while the
        consuming connection is down, ``"not consuming"`` until the channel is open with
        this worker's consumer registered on every one of its queues.
        """
        if self._stopping.is_set():
            return "stopping"
        if not is_connected(self._connection):
            return "not connected"
        # Returns at once: the connection is up (checked just before, nothing awaited since).
        if not await is_consuming(self._channel, self._consumers, len(self.app.queues())):
            return "not consuming"
        return None

    async def _register_queues(self) -> None:
        """Register the app's queues (for status). A failure is logged, not raised."""
        assert self._connection is not None
        try:
            await register(self._connection, self.settings.prefix, self.app.queues())
        except Exception as exc:  # status lists the queues once a later start registers
            log.warning("worker.register.failed", error=repr(exc))

    def _delivery_callback(self, queue: str) -> OnMessage:
        return delivery_callback(self.dispatcher, queue, self._stopping, self._in_flight)

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop consuming, finish running handlers within the grace period, then close."""
        if self._stopping.is_set():
            await self._stopped.wait()
            return
        self._stopping.set()
        grace = self.settings.grace_period if grace_period is None else grace_period
        await self._cancel_consumers()
        pending = set(self._in_flight)
        if pending:
            log.info("worker.draining", in_flight=len(pending), grace_period=grace)
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()  # its delivery stays unacked: the broker requeues it
            if late:
                await asyncio.wait(late, timeout=5)
        # Only now: cancelling the poller within a channel RPC can make the broker close
        # the whole connection (CHANNEL_ERROR), and with it the acks of running handlers.
        await _cancel(self._poison_poller)
        await _cancel(self._unroutable_watch)
        if self._connection is not None:
            await self._connection.close()
        metrics.untrack_connected(self)
        if self._owns_publisher:
            await self.publisher.close()
        await self._close_schedule()
        for hook in reversed(self.app.shutdown_hooks):
            try:
                await hook()
            except Exception as exc:
                log.error("worker.shutdown_hook.failed", hook=repr(hook), error=repr(exc))
        await _cancel(self._heartbeat_task)
        if self._health is not None:
            await self._health.close()
        log.info("worker.stopped", worker=self.name, outcomes=dict(self.outcomes))
        self._stopped.set()

    async def _close_schedule(self) -> None:
        """Write the outcomes still queued, unregister from cancels, close our own store."""
        if self._cancel_watch is not None:
            await self._cancel_watch.stop()
        if self._owns_schedule and self.schedule is not None:
            await self.schedule.close()

    async def _cancel_consumers(self) -> None:
        if self._channel is None or self._channel.is_closed:
            return
        for queue, tag in self._consumers:
            with suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), 5)

    async def run_until_signalled(self) -> None:
        """Start, run until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        try:
            await self.start()  # a start that fails has cleaned up after itself
            try:
                await stop_requested.wait()
                log.info("worker.signalled", worker=self.name)
            finally:
                await self.stop()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to end."""
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task])


def run(app: Consumer, settings: Settings | None = None) -> None:
    """Run ``app`` in this process until SIGTERM/SIGINT (for consumers/ entrypoints)."""
    from postdate.observe._logs import configure_logging

    configure_logging()
    heap.tune_for_worker()
    asyncio.run(Worker(app, settings).run_until_signalled())


def _store_at(url: str) -> ScheduleStore:
    """The schedule store at ``url`` (imported here: it needs the sql extra).

    Raises:
        ModuleNotFoundError: the sql extra is not installed (the message names it).
    """
    from postdate.schedule import ScheduleStore

    return ScheduleStore.from_url(url)
