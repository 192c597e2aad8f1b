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
from collections.abc import Awaitable, Callable
from contextlib import suppress
from wsgiref.simple_server import WSGIServer

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from postdate.connection import connect
from postdate.consumer import Consumer
from postdate.declare import declare_topology
from postdate.dispatch import Dispatcher
from postdate.errors import CommandDefinitionError
from postdate.logs import get_logger
from postdate.metrics import serve_metrics
from postdate.outcomes import Outcome
from postdate.publisher import Publisher
from postdate.settings import Settings

log = get_logger(__name__)


class Worker:
    """Runs ``app`` against the broker in ``settings``.

    ``prefetch`` bounds deliveries held by this worker, ``concurrency`` the handlers
    running at once. Retry, poison and follow-up copies go out through ``publisher``:
    one of its own by default; a given one must be started, and is not closed, by the
    caller. :meth:`stop` stops consuming, lets running handlers finish within
    ``grace_period`` seconds, and leaves everything else unacked for redelivery.
    """

    def __init__(
        self,
        app: Consumer,
        settings: Settings | None = None,
        *,
        name: str | None = None,
        publisher: Publisher | None = None,
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
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._in_flight: set[asyncio.Task[object]] = set()
        self._stopped = asyncio.Event()
        self._metrics: WSGIServer | None = None

    @property
    def metrics_port(self) -> int | None:
        """Where /metrics is served (``POSTDATE_METRICS_PORT``), or None."""
        return None if self._metrics is None else int(self._metrics.server_port)

    @property
    def outcomes(self) -> Counter[Outcome]:
        """How many deliveries ended in each outcome since this worker was made."""
        return self.dispatcher.outcomes

    async def start(self) -> None:
        """Connect, declare the app's topology and start consuming.

        A start that fails closes what it opened (connections, metrics server) and runs
        the shutdown hooks before it raises.

        Raises:
            BrokerUnavailable: the broker cannot be reached.
            TopologyMismatch: a queue exists with other arguments.
            CommandDefinitionError: the app has no handlers.
        """
        if not self.app.registrations:
            raise CommandDefinitionError("the consumer app has no handlers: nothing to consume")
        try:
            await self._start()
        except BaseException:
            await self.stop(grace_period=0)
            raise
        log.info("worker.started", worker=self.name, queues=sorted(self.app.queues()))

    async def _start(self) -> None:
        if self.settings.metrics_port is not None and self._metrics is None:
            self._metrics = serve_metrics(self.settings.metrics_port)
            log.info("worker.metrics", port=self.metrics_port)
        for hook in self.app.startup_hooks:
            await hook()
        if self._owns_publisher:
            await self.publisher.start()
        self._connection = await connect(
            self.settings.url,
            name=self.name,
            attempts=self.settings.connect_attempts,
            attempt_timeout=self.settings.connect_timeout,
        )
        topology = self.app.topology(self.settings.prefix, self.settings.delivery_limit)
        await declare_topology(self._connection, topology)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self.settings.prefetch)
        specs = {spec.name: spec for spec in topology.queues}
        for name in self.app.queues():
            # Declared (not merely looked up) through the robust channel, so that the
            # queue and its consumer are restored after a reconnect.
            queue = await self._channel.declare_queue(
                name, durable=True, arguments=dict(specs[name].arguments)
            )
            tag = await queue.consume(self._on_message(name))
            self._consumers.append((queue, tag))

    def _on_message(self, queue: str) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._in_flight.add(task)
            try:
                if self._stopping.is_set():
                    return  # left unacked: redelivered after we close
                await self.dispatcher.process(message, queue)
            except asyncio.CancelledError:  # cut off by the grace period on stop
                self.dispatcher.abandoned(message, queue, "cut off by the grace period")
                raise
            except Exception:  # a bug of ours: give the delivery back, keep running
                log.exception("worker.dispatch_failed", message_id=message.message_id)
                with suppress(Exception):
                    await message.nack(requeue=True)
            finally:
                self._in_flight.discard(task)

        return on_message

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
        if self._connection is not None:
            await self._connection.close()
        if self._owns_publisher:
            await self.publisher.close()
        for hook in reversed(self.app.shutdown_hooks):
            try:
                await hook()
            except Exception as exc:
                log.error("worker.shutdown_hook.failed", hook=repr(hook), error=repr(exc))
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.shutdown)
            self._metrics.server_close()
        log.info("worker.stopped", worker=self.name, outcomes=dict(self.outcomes))
        self._stopped.set()

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
            await self.start()
            await stop_requested.wait()
            log.info("worker.signalled", worker=self.name)
        finally:
            await self.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


def run(app: Consumer, settings: Settings | None = None) -> None:
    """Run ``app`` in this process until SIGTERM/SIGINT (for consumers/ entrypoints)."""
    from postdate.logs import configure_logging

    configure_logging()
    asyncio.run(Worker(app, settings).run_until_signalled())
