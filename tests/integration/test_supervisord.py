"""consumers/supervisord.conf really runs: real supervisord started by consumers/supervisor.sh
in a run directory of the test's own, stopped through supervisorctl."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.ext.asyncio import async_sessionmaker

from orders.commands import expire_command_for
from postdate import Publisher, Settings, outbox
from postdate.broker._topology import command_queue_topology
from postdate.schedule import ScheduleStore, make_engine
from tests.helpers import Cleanup, collect, eventually
from tests.integration.test_cli import POSTDATE
from tests.integration.test_worker_processes import wait_for_consumer

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "consumers" / "supervisor.sh"
CONF = ROOT / "consumers" / "supervisord.conf"
BIN = Path(sys.executable).parent
WORKERS = ("expire_reservation_00", "expire_reservation_01")
PROCESSES = (*WORKERS, "outbox_relay")
SENT = 1500
pytestmark = pytest.mark.timeout(120)


def supervisorctl(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(WRAPPER), "ctl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_prefix() -> str:
    """A prefix P whose ports P00 and P01 are free, below Linux's ephemeral range."""
    for _ in range(100):
        prefix = str(random.randint(200, 326))
        if all(port_is_free(int(f"{prefix}{n:02d}")) for n in range(len(WORKERS))):
            return prefix
    raise AssertionError("no free pair of metrics ports")


def log_lines(run_dir: Path, process: str) -> list[str]:
    path = run_dir / f"{process}.log"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def events(run_dir: Path, process: str) -> list[dict[str, object]]:
    """The process's log events; every line must be one whole JSON object."""
    parsed = []
    for line in log_lines(run_dir, process):
        event = json.loads(line)  # a glued or cut line fails here
        assert isinstance(event, dict), line
        parsed.append(event)
    return parsed


def settled_ids(run_dir: Path, queue: str, processes: Sequence[str] = WORKERS) -> list[str]:
    """Message ids the ``processes`` settled (acked) on ``queue``, one per settlement."""
    return [
        str(event["message_id"])
        for process in processes
        for event in events(run_dir, process)
        if event.get("event") == "message"
        and event.get("queue") == queue
        and event.get("outcome") in ("handled", "skipped")
    ]


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"  # supervisor.sh creates it


@pytest.fixture
def queue(prefix: str) -> str:
    return f"{prefix}.orders.expire_reservation"


@pytest.fixture
def supervisor_env(settings: Settings, tmp_path: Path, run_dir: Path, queue: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RABBITMQ_URL": settings.url,
        "POSTDATE_PREFIX": settings.prefix,
        "POSTDATE_GRACE_PERIOD": "5",
        "POSTDATE_RUN_DIR": str(run_dir),
        "POSTDATE_METRICS_PORT_PREFIX": free_port_prefix(),
        "ORDERS_EXPIRE_QUEUE": queue,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("POSTDATE_METRICS_PORT", None)
    return env


async def test_supervisord_runs_the_consumers_and_stops_them_without_loss(
    settings: Settings,
    cleanup: Cleanup,
    supervisor_env: dict[str, str],
    run_dir: Path,
    queue: str,
    connection: AbstractRobustConnection,
) -> None:
    cleanup.track(command_queue_topology(settings.prefix, queue))
    supervisord = subprocess.Popen(
        [str(WRAPPER)],
        env=supervisor_env,
        stdout=subprocess.DEVNULL,  # supervisord's own log is in the run directory too
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        await eventually(
            lambda: supervisorctl(supervisor_env, "status").count("RUNNING") == len(PROCESSES),
            60,
            f"{len(PROCESSES)} processes RUNNING",
            interval=0.2,  # each poll runs supervisorctl
        )
        # The socket, pid file and every log live in the run directory, nowhere else.
        assert "/tmp" not in CONF.read_text()
        assert (run_dir / "supervisor.sock").is_socket()
        assert (run_dir / "supervisord.pid").read_text().strip() == str(supervisord.pid)
        assert "spawned: 'outbox_relay'" in (run_dir / "supervisord.log").read_text()
        await wait_for_consumer(settings.url, queue, consumers=len(WORKERS))

        # One metrics port per worker process, each answering.
        base = supervisor_env["POSTDATE_METRICS_PORT_PREFIX"]
        for number, process in enumerate(WORKERS):
            port = int(f"{base}{number:02d}")
            served = [e for e in events(run_dir, process) if e.get("event") == "worker.metrics"]
            assert [event["port"] for event in served] == [port]
            assert "postdate_messages" in metrics(port)

        # Both workers log a line per message at the same time.
        command = expire_command_for(queue)
        async with Publisher(settings=settings, connection_name="pytest supervisord") as pub:
            ids = await pub.send_many(
                (command(order_id=uuid.uuid4()), timedelta(seconds=(n % 20) / 10))
                for n in range(SENT)
            )
        await eventually(
            lambda: len(settled_ids(run_dir, queue)) >= SENT // 2, 60, f"{SENT // 2} settled"
        )
        stopped = supervisorctl(supervisor_env, "stop", "all")
        assert stopped.count("stopped") == len(PROCESSES), stopped

        # Whole JSON lines only, from both workers, and no command lost by the stop.
        assert all(settled_ids(run_dir, queue, [process]) for process in WORKERS)
        settled = set(settled_ids(run_dir, queue))
        assert settled <= set(ids)
        remaining = len(set(ids) - settled)
        leftovers = await collect(connection, queue, remaining, timeout=15) if remaining else []
        assert settled | {item.message.message_id for item in leftovers} == set(ids)
        for process in WORKERS:  # every worker stopped cleanly on SIGTERM
            assert [e for e in events(run_dir, process) if e.get("event") == "worker.stopped"]
        assert events(run_dir, "outbox_relay")
    finally:
        supervisorctl(supervisor_env, "shutdown")
        try:
            supervisord.wait(30)
        except subprocess.TimeoutExpired:
            supervisord.kill()
            supervisord.wait()


# --- postdate relay: the `relay` program ---------------------------------------------------


async def _scheduled(url: str, queue: str) -> str:
    """Create the tables at ``url`` and write one reminder due in an hour."""
    engine = make_engine(url)
    try:
        store = ScheduleStore(async_sessionmaker(engine, expire_on_commit=False))
        await store.create_tables()
        async with store.sessions() as session, session.begin():
            command = expire_command_for(queue)(order_id=uuid.uuid4())
            return await outbox.schedule(session, command, delay=timedelta(hours=1))
    finally:
        await engine.dispose()


def _reschedule(env: dict[str, str], message_id: str) -> str:
    result = subprocess.run(
        [POSTDATE, "schedule", "reschedule", message_id, "--delay", "5s", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["rescheduled_as"])


async def test_a_rescheduled_command_is_handled_on_time_with_postdate_relay(
    settings: Settings,
    cleanup: Cleanup,
    supervisor_env: dict[str, str],
    run_dir: Path,
    queue: str,
    tmp_path: Path,
) -> None:
    cleanup.track(command_queue_topology(settings.prefix, queue))
    url = f"sqlite+aiosqlite:///{tmp_path / 'schedule.db'}"
    env = {**supervisor_env, "POSTDATE_SCHEDULE_URL": url}  # workers use it too
    first = await _scheduled(url, queue)
    supervisord = subprocess.Popen(
        [str(WRAPPER)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT
    )
    try:
        await eventually(
            lambda: supervisorctl(env, "status").count("RUNNING") == len(PROCESSES),
            60,
            "the processes RUNNING",
            interval=0.2,
        )
        assert "relay " in supervisorctl(env, "status")  # configured, not started
        assert "started" in supervisorctl(env, "start", "relay")
        await eventually(
            lambda: any(e.get("event") == "relay.started" for e in events(run_dir, "relay")),
            20,
            "postdate relay started",
        )

        started = time.monotonic()
        moved = await asyncio.to_thread(_reschedule, env, first)
        await eventually(lambda: moved in settled_ids(run_dir, queue), 15, "handled")
        assert time.monotonic() - started < 7.5  # due in 5 s, CLI start-up included
        [handled] = [
            e for p in PROCESSES for e in events(run_dir, p) if e.get("message_id") == moved
        ]
        assert datetime.fromisoformat(str(handled["timestamp"])) >= datetime.now(UTC) - timedelta(
            seconds=8
        )

        assert "stopped" in supervisorctl(env, "stop", "relay")
        [stopped] = [e for e in events(run_dir, "relay") if e.get("event") == "relay.stopped"]
        assert stopped["published"] == 2 and stopped["failed"] == 0  # first, then moved
    finally:
        supervisorctl(env, "shutdown")
        try:
            supervisord.wait(30)
        except subprocess.TimeoutExpired:
            supervisord.kill()
            supervisord.wait()
