"""Test helpers: broker cleanup, consuming with arrival times, throwaway command classes."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import types
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Self, TypeVar, cast

import aio_pika
import yarl
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from postdate._command import Command
from postdate._settings import DEFAULT_URL, Settings
from postdate.broker._connection import named_url
from postdate.broker._declare import declare_topology, delete_topology, queue_exists
from postdate.broker._registry import registered, registry_queue, registry_topology
from postdate.broker._topology import (
    ExchangeSpec,
    ExchangeType,
    Names,
    QueueSpec,
    Topology,
    command_queue_topology,
    ladder_topology,
)
from postdate.consume._consumer import Consumer
from postdate.consume._worker import Worker
from postdate.delay._plugin import plugin_topology
from postdate.delay._routing import Route, plan
from postdate.publish._envelope import Envelope

C = TypeVar("C", bound=Command)


# The backends a behaviour test runs on (``@pytest.mark.parametrize("backend", BACKENDS)``);
# the plugin's needs a broker with the delayed-message plugin at POSTDATE_PLUGIN_URL.
BACKENDS = ("ladder", "plugin")
PLUGIN_URL = "POSTDATE_PLUGIN_URL"
NO_PLUGIN = f"{PLUGIN_URL} not set: no broker with the delayed-message plugin here"


def broker_url() -> str:
    """The broker the tests use: ``RABBITMQ_URL``, default ``amqp://guest:guest@localhost:5672/``."""
    return os.environ.get("RABBITMQ_URL", DEFAULT_URL)


def amqp_url(connection_name: str, url: str | None = None) -> str:
    """The broker URL with ``?name=`` set, so the management UI shows who opened it."""
    return named_url(url or broker_url(), connection_name)


def broker_address(url: str | None = None) -> tuple[str, int]:
    parsed = yarl.URL(url or broker_url())
    default_port = 5671 if parsed.scheme == "amqps" else 5672
    return parsed.host or "localhost", parsed.port or default_port


class Ping(Command, queue="postdate-tests.ping"):
    """Base of throwaway test commands; derive one per queue with :func:`command_for`."""

    n: int


def derive(base: type[C], queue: str, name: str | None = None) -> type[C]:
    """A subclass of ``base`` delivered to ``queue``, with command type ``name`` (default:
    the base's name). Tests name their queues after their own prefix, so the class is
    made at run time."""
    name = name or base.__name__
    return cast(type[C], types.new_class(name, (base,), {"queue": queue, "name": name}))


def command_for(queue: str, name: str = "Ping") -> type[Ping]:
    """A :class:`Ping` subclass delivered to ``queue`` with command type ``name``."""
    return derive(Ping, queue, name)


@dataclass(frozen=True)
class Received:
    """One consumed message and the wall-clock time (``time.time()``) it arrived."""

    queue: str
    message: AbstractIncomingMessage
    arrived: float

    @property
    def arrived_ms(self) -> float:
        return self.arrived * 1000


class Collector:
    """Consumes up to ``count`` messages from one queue, acking each, noting arrival times.

    Start it before publishing so arrival times are real::

        async with Collector(connection, "q", 10) as collector:
            await publisher.send_many(...)
            received = await collector.wait(timeout=30)

    Messages beyond ``count`` are left unacknowledged, so the broker requeues them when
    the channel closes.
    """

    def __init__(
        self, connection: AbstractConnection, queue_name: str, count: int, *, prefetch: int = 500
    ) -> None:
        self.connection = connection
        self.queue_name = queue_name
        self.count = count
        self.prefetch = prefetch
        self.received: list[Received] = []
        self._done = asyncio.Event()
        self._channel: AbstractChannel | None = None
        if count <= 0:
            self._done.set()

    async def start(self) -> None:
        self._channel = await self.connection.channel()
        await self._channel.set_qos(prefetch_count=self.prefetch)
        queue = await self._channel.get_queue(self.queue_name, ensure=False)
        await queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        arrived = time.time()
        if len(self.received) >= self.count:
            return
        self.received.append(Received(self.queue_name, message, arrived))
        await message.ack()
        if len(self.received) >= self.count:
            self._done.set()

    async def wait(self, timeout: float) -> list[Received]:
        """The ``count`` messages, once all arrived; AssertionError naming the shortfall
        if they did not within ``timeout`` s."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.queue_name}: got {len(self.received)} of {self.count} messages "
                f"within {timeout} s"
            ) from None
        return list(self.received)

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def collect(
    connection: AbstractConnection,
    queue_name: str,
    count: int,
    timeout: float,
    *,
    prefetch: int = 500,
) -> list[Received]:
    """Consume ``count`` messages from ``queue_name`` (acking each) within ``timeout`` s.

    Returns them with their arrival times; raises AssertionError naming the shortfall on
    timeout. Messages beyond ``count`` are left for the broker to requeue.
    """
    async with Collector(connection, queue_name, count, prefetch=prefetch) as collector:
        return await collector.wait(timeout)


async def queue_depth(connection: AbstractConnection, queue_name: str) -> int:
    """Messages ready in ``queue_name`` (passive declare; the queue must exist)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        underlay = await channel.get_underlay_channel()
        declared = await underlay.queue_declare(queue_name, passive=True)
        return int(declared.message_count or 0)
    finally:
        if not channel.is_closed:
            await channel.close()


async def ladder_depths(connection: AbstractConnection, prefix: str) -> dict[str, int]:
    """Ready messages in every queue of ``prefix``'s ladder (which must be declared)."""
    return {
        spec.name: await queue_depth(connection, spec.name)
        for spec in ladder_topology(prefix).queues
    }


@dataclass
class Cleanup:
    """Deletes, at teardown, every queue and exchange a test declared.

    The ladder of the test's prefix is always included; :meth:`track` adds more
    topologies, :meth:`track_queue`/:meth:`track_exchange` single objects.
    """

    url: str
    prefix: str
    connection_name: str
    topologies: list[Topology] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.track(ladder_topology(self.prefix))
        self.track(plugin_topology(self.prefix))  # the plugin backend's exchange, if any

    def track(self, topology: Topology) -> Topology:
        self.topologies.append(topology)
        return topology

    def track_queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def track_exchange(self, name: str) -> str:
        self.exchanges.append(name)
        return name

    def queue_names(self) -> list[str]:
        names = [spec.name for topology in self.topologies for spec in topology.queues]
        return list(dict.fromkeys([*names, *self.queues]))

    def exchange_names(self) -> list[str]:
        names = [spec.name for topology in self.topologies for spec in topology.exchanges]
        return list(dict.fromkeys([*names, *self.exchanges]))

    async def declare(self, connection: AbstractConnection, topology: Topology) -> Topology:
        """Track ``topology`` for deletion, then declare it."""
        await declare_topology(connection, self.track(topology))
        return topology

    async def _track_registered(self, connection: AbstractConnection) -> None:
        """Command queues that workers and publishers registered (and the registry)."""
        self.track(registry_topology(self.prefix))  # deleted whether or not it exists
        if not await queue_exists(connection, registry_queue(self.prefix)):
            return
        for queue in await registered(connection, self.prefix):
            self.track(command_queue_topology(self.prefix, queue, retry_tiers=()))

    async def run(self, lanes: int = 4) -> None:
        """Delete everything tracked on a fresh connection, ignoring what is already gone
        (with :func:`postdate.broker._declare.delete_topology`, queues before exchanges).
        """
        connection = await aio_pika.connect(amqp_url(f"{self.connection_name} cleanup", self.url))
        try:
            await self._track_registered(connection)
            await _delete_all(connection, self.queue_names(), queue=True, lanes=lanes)
            # One lane: RabbitMQ 3.10 crashes the connection (INTERNAL_ERROR) when
            # exchanges bound to each other are deleted at once on different channels.
            await _delete_all(connection, self.exchange_names(), queue=False, lanes=1)
        finally:
            await connection.close()


async def _delete_all(
    connection: AbstractConnection, names: Iterable[str], *, queue: bool, lanes: int
) -> None:
    pending = list(names)
    # A few channels in parallel: each channel runs one RPC at a time.
    await asyncio.gather(
        *(
            delete_topology(connection, _named_topology(lane_names, queue=queue))
            for lane_names in (pending[lane::lanes] for lane in range(lanes))
            if lane_names
        )
    )


def _named_topology(names: list[str], *, queue: bool) -> Topology:
    """A topology of just these queues (or exchanges): deleting needs nothing but names."""
    if queue:
        return Topology(queues=tuple(QueueSpec(name, arguments={}) for name in names))
    return Topology(exchanges=tuple(ExchangeSpec(name, ExchangeType.TOPIC) for name in names))


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` (plain or async) until it holds; AssertionError naming ``what``
    after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await _holds(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def _holds(predicate: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = predicate()
    if inspect.isawaitable(result):
        return bool(await result)
    return result


async def rabbitmqctl(*args: str) -> str:
    """``rabbitmqctl -q ARGS``'s output; skips the calling test where it cannot run (not
    installed, or a remote broker)."""
    import pytest

    try:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-q",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except FileNotFoundError:
        pytest.skip(f"rabbitmqctl is not installed: cannot run rabbitmqctl {args[0]}")
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    if process.returncode != 0:
        pytest.skip(f"rabbitmqctl {args[0]} failed here (remote broker?)")
    return output.decode()


async def open_connection_names() -> list[str]:
    """Client-given names of the connections open on the local broker (``rabbitmqctl``);
    skips the calling test where rabbitmqctl cannot answer."""
    marker = '{"connection_name","'
    output = await rabbitmqctl("list_connections", "client_properties")
    return [
        line.split(marker, 1)[1].split('"', 1)[0] for line in output.splitlines() if marker in line
    ]


async def send_around_the_publisher(
    connection: AbstractConnection, prefix: str, command: Command, delay: float = 0
) -> str:
    """Publish ``command`` through the ladder as another client would: nobody makes
    sure its queue exists."""
    now = datetime.now(UTC)
    envelope = Envelope.for_command(command, now + timedelta(seconds=delay))
    await publish_route(connection, envelope, plan(Names(prefix), envelope, now))
    return envelope.message_id


async def publish_route(
    connection: AbstractConnection, envelope: Envelope, target: Route, mandatory: bool = False
) -> None:
    """Publish ``envelope`` to ``target`` on a confirming channel of its own."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        underlay = await channel.get_underlay_channel()
        await underlay.basic_publish(
            envelope.body,
            exchange=target.exchange,
            routing_key=target.routing_key,
            properties=envelope.properties(target.cc),
            mandatory=mandatory,
        )
    finally:
        await channel.close()


StartWorker = Callable[[Consumer], Awaitable[Worker]]


@dataclass
class WorkerStarter:
    """Starts workers of a test (their topology tracked for cleanup), stops them after."""

    settings: Settings
    cleanup: Cleanup
    test_name: str
    workers: list[Worker] = field(default_factory=list)

    async def start(self, app: Consumer) -> Worker:
        """Start a worker of ``app``, named after the test."""
        self.cleanup.track(app.topology(self.settings.prefix, self.settings.delivery_limit))
        worker = Worker(app, self.settings, name=f"{self.test_name} worker{len(self.workers)}")
        self.workers.append(worker)
        await worker.start()
        return worker

    async def stop_all(self) -> None:
        """Stop every worker started, with a short grace period."""
        for worker in self.workers:
            await worker.stop(grace_period=2)
