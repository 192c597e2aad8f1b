"""The worker's metrics port against the real broker: /readyz follows the consuming
connection (down and back up), /healthz, 404, the gauges, and a busy port."""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pytest
import yarl
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from postdate import (
    Consumer,
    Context,
    MetricsPortUnavailable,
    Outcome,
    Publisher,
    RetryPolicy,
    Settings,
    Worker,
)
from postdate.broker._topology import poison_queue
from postdate.publish._envelope import Envelope
from tests.helpers import (
    Cleanup,
    Ping,
    broker_address,
    command_for,
    eventually,
    queue_depth,
    rabbitmqctl,
)
from tests.integration.test_cli import ROOT, postdate


class MakeWorker(Protocol):
    def __call__(self, app: Consumer, given: Settings | None = None) -> Worker: ...


@pytest.fixture
async def make_worker(
    settings: Settings, cleanup: Cleanup, test_name: str
) -> AsyncIterator[MakeWorker]:
    """Makes (not starts) workers of an app serving a free metrics port and reading poison
    depths every 0.2 s; stops them at teardown."""
    workers: list[Worker] = []

    def make(app: Consumer, given: Settings | None = None) -> Worker:
        cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
        served = (given or settings).model_copy(update={"metrics_port": 0})
        worker = Worker(app, served, name=f"{test_name} worker{len(workers)}")
        worker.poison_poll_seconds = 0.2
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.stop(grace_period=2)


class Gate:
    """A TCP relay to the broker that the test can close to new connections: with it
    closed, aio-pika's reconnects fail (and are retried every second) until it opens."""

    def __init__(self, url: str) -> None:
        self.broker = broker_address(url)
        self.open = True
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on a free local port; returns it."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client: asyncio.StreamReader, back: asyncio.StreamWriter) -> None:
        if not self.open:
            back.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        broker, forth = await asyncio.open_connection(*self.broker)
        try:
            await asyncio.gather(_pipe(client, forth), _pipe(broker, back))
        finally:
            self._relays.discard(task)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.close()


@pytest.fixture
async def gated_settings(settings: Settings) -> AsyncIterator[tuple[Settings, Gate]]:
    """The test's settings with the broker behind a :class:`Gate`."""
    gate = Gate(settings.url)
    port = await gate.start()
    url = str(yarl.URL(settings.url).with_host("127.0.0.1").with_port(port))
    try:
        yield settings.model_copy(update={"rabbitmq_url": url}), gate
    finally:
        await gate.close()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def _get(port: int | None, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def get(worker: Worker, path: str) -> tuple[int, str]:
    """Status and body of ``path`` on the worker's metrics port (from a thread: the
    readiness check needs the event loop free)."""
    return await asyncio.to_thread(_get, worker.metrics_port, path)


async def samples(worker: Worker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and sorted labels."""
    status, page = await get(worker, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


async def sample(worker: Worker, name: str, **labels: str) -> float | None:
    return (await samples(worker)).get((name, tuple(sorted(labels.items()))))


async def close_from_broker(connection_name: str) -> None:
    """Have the broker close the connection the client named ``connection_name``."""
    listed = await rabbitmqctl("list_connections", "pid", "client_properties")
    marker = f'{{"connection_name","{connection_name}"}}'
    pids = [line.split("\t", 1)[0] for line in listed.splitlines() if marker in line]
    assert len(pids) == 1, f"connections named {connection_name!r}: {pids}"
    await rabbitmqctl("close_connection", pids[0], "test closes the worker's connection")


async def test_ready_only_while_consuming_and_again_after_a_reconnect(
    prefix: str, gated_settings: tuple[Settings, Gate], make_worker: MakeWorker
) -> None:
    cmd = command_for(f"{prefix}.ready")
    app = Consumer()
    during_start: list[tuple[int, str]] = []
    handled: list[int] = []

    @app.on_startup
    async def probe_before_connecting() -> None:
        during_start.append(await get(worker, "/readyz"))
        during_start.append(await get(worker, "/healthz"))

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        handled.append(command.n)

    settings, gate = gated_settings
    worker = make_worker(app, settings)
    await worker.start()
    assert during_start == [(503, "not connected\n"), (200, "alive\n")]
    assert await get(worker, "/readyz") == (200, "ready\n")
    assert await get(worker, "/healthz") == (200, "alive\n")
    assert await get(worker, "/metrics/") == (404, "not found\n")
    assert await get(worker, "/") == (404, "not found\n")
    assert await sample(worker, "postdate_connected") == 1.0

    gate.open = False  # the reconnects fail until the gate opens again
    await close_from_broker(worker.name)
    await eventually(
        lambda: get_is(worker, "/readyz", (503, "not connected\n")), 5, "/readyz not connected"
    )
    assert await sample(worker, "postdate_connected") == 0.0
    assert await get(worker, "/healthz") == (200, "alive\n")
    await asyncio.sleep(1.5)  # aio-pika retries every second, in vain
    assert await get(worker, "/readyz") == (503, "not connected\n")

    gate.open = True
    await eventually(
        lambda: get_is(worker, "/readyz", (200, "ready\n")), 15, "ready after the reconnect"
    )
    assert await sample(worker, "postdate_connected") == 1.0
    await worker.publisher.send(cmd(n=1))
    await eventually(lambda: handled == [1], 10, "a delivery consumed after the reconnect")


async def test_gauges_count_held_and_in_flight_deliveries_and_readyz_says_stopping(
    prefix: str, connection: AbstractRobustConnection, make_worker: MakeWorker
) -> None:
    cmd = command_for(f"{prefix}.gauges")
    app = Consumer()
    running = asyncio.Event()
    release = asyncio.Event()

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        running.set()
        await release.wait()

    worker = make_worker(app)
    await worker.start()
    envelope = Envelope.for_command(cmd(n=1), datetime.now(UTC) + timedelta(seconds=0.8))
    channel = await connection.channel()  # due in 0.8 s, published now: held until due
    underlay = await channel.get_underlay_channel()
    await underlay.basic_publish(
        envelope.body, routing_key=cmd.queue, properties=envelope.properties()
    )

    async def gauges() -> tuple[float | None, float | None]:
        values = await samples(worker)
        labels = (("queue", cmd.queue),)
        return values.get(("postdate_held", labels)), values.get(("postdate_in_flight", labels))

    async def gauges_are(expected: tuple[float, float]) -> bool:
        return await gauges() == expected

    await eventually(lambda: gauges_are((1.0, 1.0)), 5, "held 1, in flight 1")
    await asyncio.wait_for(running.wait(), 5)
    assert await gauges() == (0.0, 1.0)
    stopping = asyncio.create_task(worker.stop(grace_period=5))
    await eventually(
        lambda: get_is(worker, "/readyz", (503, "stopping\n")), 5, "/readyz 503 stopping"
    )
    assert await get(worker, "/healthz") == (200, "alive\n")
    release.set()
    await stopping
    assert worker.outcomes[Outcome.HANDLED] == 1
    assert REGISTRY.get_sample_value("postdate_in_flight", {"queue": cmd.queue}) == 0.0
    assert REGISTRY.get_sample_value("postdate_connected") == 0.0


async def get_is(worker: Worker, path: str, expected: tuple[int, str]) -> bool:
    return await get(worker, path) == expected


async def test_poison_depth_and_lateness_of_first_attempts_apart_from_retry_waits(
    prefix: str,
    publisher: Publisher,
    connection: AbstractRobustConnection,
    make_worker: MakeWorker,
) -> None:
    cmd = command_for(f"{prefix}.waits")
    app = Consumer()
    attempts: dict[int, int] = {}

    @app.handler(cmd, retries=RetryPolicy(max_attempts=2, tiers=(timedelta(seconds=1),)))
    async def handle(command: Ping, context: Context) -> None:
        attempts[command.n] = context.attempt
        if command.n < 3 or context.attempt == 1:
            raise ValueError(f"fails {command.n}")  # 1 and 2 are parked, 3 handled on retry

    worker = make_worker(app)
    await worker.start()
    await publisher.send_many((cmd(n=n), 0) for n in (1, 2, 3))
    await eventually(lambda: sum(worker.outcomes.values()) == 6, 15, "3 retried, then settled")
    assert worker.outcomes[Outcome.POISONED] == 2

    async def depth_is_2() -> bool:
        return await sample(worker, "postdate_poison_depth", queue=cmd.queue) == 2.0

    await eventually(depth_is_2, 5, "postdate_poison_depth 2")
    assert await queue_depth(connection, poison_queue(cmd.queue)) == 2
    values = await samples(worker)
    queue = (("queue", cmd.queue),)
    assert values[("postdate_lateness_seconds_count", queue)] == 3  # first attempts only
    assert values[("postdate_retry_wait_seconds_count", queue)] == 3
    assert values[("postdate_retry_wait_seconds_sum", queue)] >= 3 * 0.9  # 1 s back-off each
    below = (("le", "0.1"), ("queue", cmd.queue))
    assert values[("postdate_retry_wait_seconds_bucket", below)] == 0


async def test_a_busy_metrics_port_fails_the_start_in_one_line(
    settings: Settings, busy_port: int, test_name: str
) -> None:
    app = Consumer()
    opened: list[str] = []

    @app.on_startup
    async def never() -> None:
        opened.append("startup hook")

    @app.handler(command_for(f"{settings.prefix}.busy"))
    async def handle(command: Ping, context: Context) -> None:
        pass

    worker = Worker(app, settings.model_copy(update={"metrics_port": busy_port}), name=test_name)
    with pytest.raises(MetricsPortUnavailable) as caught:
        await worker.start()
    message = str(caught.value)
    assert f"port {busy_port}" in message
    assert "POSTDATE_METRICS_PORT" in message
    assert "\n" not in message
    assert opened == []  # failed before any hook or connection
    assert worker.metrics_port is None


def test_worker_command_with_a_busy_metrics_port_exits_with_one_line(
    settings: Settings, busy_port: int
) -> None:
    result = postdate(
        settings,
        "worker",
        "tests.integration.worker_app:app",
        POSTDATE_METRICS_PORT=str(busy_port),
        TEST_QUEUE=f"{settings.prefix}.jobs",
        # this checkout's postdate, whichever one the venv was installed from
        PYTHONPATH=os.pathsep.join((str(ROOT / "src"), str(ROOT))),
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {busy_port}" in lines[0]
    assert "POSTDATE_METRICS_PORT" in lines[0]
