"""No loss under faults: worker processes killed, stopped, or cut off by the broker."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
import yarl

from postdate import Publisher, Settings
from postdate.broker._topology import Names, command_queue_topology, poison_queue
from tests.helpers import Cleanup, collect, command_for, eventually, queue_depth

ROOT = Path(__file__).resolve().parents[2]
POSTDATE = str(Path(sys.executable).parent / "postdate")
pytestmark = pytest.mark.timeout(240)


class Journal:
    """Reads the "start <n> <pid>" / "end <n> <pid>" lines the worker app writes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, int, int]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            kind, number, pid = line.split()
            rows.append((kind, int(number), int(pid)))
        return rows

    def ended(self) -> Counter[int]:
        return Counter(number for kind, number, _ in self.lines() if kind == "end")

    def started(self) -> Counter[int]:
        return Counter(number for kind, number, _ in self.lines() if kind == "start")


def spawn_worker(
    settings: Settings, queue: str, journal: Journal, **env: str
) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "RABBITMQ_URL": settings.url,
        "POSTDATE_PREFIX": settings.prefix,
        "TEST_QUEUE": queue,
        "TEST_JOURNAL": str(journal.path),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.Popen(
        [POSTDATE, "worker", "tests.integration.worker_app:app"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.txt")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def test_kill_9_with_hundreds_in_flight_loses_nothing(
    prefix: str,
    settings: Settings,
    publisher: Publisher,
    cleanup: Cleanup,
    journal: Journal,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    job = command_for(f"{prefix}.jobs", name="Job")
    cleanup.track(command_queue_topology(prefix, job.queue))
    env = {"POSTDATE_PREFETCH": "200", "POSTDATE_CONCURRENCY": "200", "TEST_SLEEP": "0.05"}
    processes.append(spawn_worker(settings, job.queue, journal, **env))
    await wait_for_consumer(settings.url, job.queue)
    await publisher.send_many((job(n=n), 0) for n in range(800))
    await eventually(lambda: len(journal.ended()) >= 150, 30, "150 handled")
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait(10)
    in_flight = len(journal.started()) - len(journal.ended())

    processes.append(spawn_worker(settings, job.queue, journal, **env))
    await eventually(lambda: set(journal.ended()) >= set(range(800)), 60, "all 800 handled")
    duplicates = sum(count - 1 for count in journal.ended().values())
    assert in_flight > 0, "the kill should have caught handlers in flight"
    assert duplicates <= 200, f"{duplicates} duplicates exceed the prefetch window"


async def test_sigterm_finishes_in_flight_and_redelivers_the_rest(
    prefix: str,
    settings: Settings,
    publisher: Publisher,
    cleanup: Cleanup,
    journal: Journal,
    processes: list[subprocess.Popen[bytes]],
    connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    job = command_for(f"{prefix}.jobs", name="Job")
    cleanup.track(command_queue_topology(prefix, job.queue))
    slow = {
        "POSTDATE_PREFETCH": "20",
        "POSTDATE_CONCURRENCY": "10",
        "TEST_SLEEP": "1.0",
        "POSTDATE_GRACE_PERIOD": "10",
    }
    worker = spawn_worker(settings, job.queue, journal, **slow)
    processes.append(worker)
    await wait_for_consumer(settings.url, job.queue)
    await publisher.send_many((job(n=n), 0) for n in range(100))
    await eventually(lambda: len(journal.started()) >= 10, 30, "10 handlers running")
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 20) == 0
    rows = journal.lines()
    started_by_first = {n for kind, n, pid in rows if kind == "start" and pid == worker.pid}
    ended_by_first = {n for kind, n, pid in rows if kind == "end" and pid == worker.pid}
    assert started_by_first and started_by_first == ended_by_first  # in-flight finished
    assert len(ended_by_first) < 100

    processes.append(spawn_worker(settings, job.queue, journal, TEST_SLEEP="0.001"))
    await eventually(lambda: set(journal.ended()) >= set(range(100)), 60, "all 100 handled")
    assert await queue_depth(connection, poison_queue(job.queue)) == 0  # nothing rejected
    assert await queue_depth(connection, Names(prefix).unroutable) == 0


@pytest.fixture
async def vhost(prefix: str) -> AsyncIterator[str]:
    """A vhost of the test's own, so closing all its connections touches nothing else."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed: cannot make the broker close connections")
    name = f"{prefix}-vhost"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        check=True,
        timeout=60,
    )
    yield name
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False, timeout=60)


async def test_broker_closing_all_connections_mid_stream_loses_nothing(
    vhost: str,
    rabbitmq: str,
    prefix: str,
    journal: Journal,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    url = str(yarl.URL(rabbitmq).with_path("/" + vhost))
    settings = Settings.load(prefix=prefix, rabbitmq_url=url)
    job = command_for(f"{prefix}.jobs", name="Job")
    processes.append(spawn_worker(settings, job.queue, journal, TEST_SLEEP="0.005"))
    async with Publisher(settings=settings, connection_name="pytest close_all publisher") as pub:
        ids = list(range(1000))
        await wait_for_consumer(url, job.queue)
        await pub.send_many((job(n=n), (n % 40) / 10) for n in ids)
    await eventually(lambda: len(journal.ended()) >= 200, 30, "200 handled")
    closed = subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "--vhost", vhost, "test closes all"],
        check=True,
        timeout=60,
    )
    assert closed.returncode == 0
    await eventually(
        lambda: set(journal.ended()) >= set(ids), 90, "all 1000 handled after reconnect"
    )


async def wait_for_consumer(url: str, queue: str, timeout: float = 30, consumers: int = 1) -> None:
    """Wait until ``queue`` exists and has ``consumers`` consumers (workers are up)."""
    connection = await aio_pika.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
                if (declared.declaration_result.consumer_count or 0) >= consumers:
                    return
            except aio_pika.exceptions.ChannelNotFoundEntity:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
            await asyncio.sleep(0.1)
        raise AssertionError(f"no consumer on {queue} within {timeout} s")
    finally:
        await connection.close()


async def test_message_that_kills_its_worker_again_and_again_is_parked_by_the_delivery_limit(
    prefix: str,
    settings: Settings,
    publisher: Publisher,
    cleanup: Cleanup,
    journal: Journal,
    processes: list[subprocess.Popen[bytes]],
    connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    job = command_for(f"{prefix}.jobs", name="Job")
    cleanup.track(command_queue_topology(prefix, job.queue, delivery_limit=2))
    env = {
        "POSTDATE_DELIVERY_LIMIT": "2",
        "POSTDATE_PREFETCH": "1",  # only the pill is in flight when the process dies
        "TEST_KILL_ON": "13",
        "TEST_SLEEP": "0.001",
    }
    processes.append(spawn_worker(settings, job.queue, journal, **env))
    await wait_for_consumer(settings.url, job.queue)
    await publisher.send_many((job(n=n), 0) for n in range(30))
    deaths = 0
    deadline = time.monotonic() + 90
    while set(journal.ended()) != set(range(30)) - {13}:  # a supervisor's restart loop
        assert time.monotonic() < deadline, f"still waiting after {deaths} deaths"
        if processes[-1].poll() is not None:
            deaths += 1
            processes.append(spawn_worker(settings, job.queue, journal, **env))
        await asyncio.sleep(0.1)
    assert journal.started()[13] == 3  # first delivery + 2 redeliveries, then parked
    parked = await collect(connection, poison_queue(job.queue), 1, timeout=10)
    deaths_header = parked[0].message.headers["x-death"]
    assert isinstance(deaths_header, list)
    death = deaths_header[0]
    assert isinstance(death, dict)
    assert death["reason"] == "delivery_limit"
    assert death["queue"] == job.queue
    assert parked[0].message.body == b'{"n":13}'
    assert deaths == 3
