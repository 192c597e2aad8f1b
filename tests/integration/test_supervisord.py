"""consumers/supervisord.conf really runs: real supervisord, stopped through supervisorctl."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from aio_pika.abc import AbstractRobustConnection

from postdate import Publisher, Settings
from tests.helpers import Cleanup, collect, eventually
from tests.integration.test_faults import wait_for_consumer

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "consumers" / "supervisord.conf"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.timeout(180)


def supervisorctl(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(CONF), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout


def log_events(path: Path) -> list[dict[str, object]]:
    """Every JSON object in the log; supervisord may glue two programs' lines together."""
    text = path.read_text(errors="replace")
    decoder = json.JSONDecoder()
    events, position = [], text.find("{")
    while position != -1:
        try:
            event, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        if isinstance(event, dict):
            events.append(event)
        position = text.find("{", end)
    return events


def handled_ids(path: Path, queue: str) -> set[str]:
    return {
        str(event["message_id"])
        for event in log_events(path)
        if event.get("event") == "message"
        and event.get("queue") == queue
        and event.get("outcome") == "handled"
    }


@pytest.fixture
def supervisor_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RABBITMQ_URL": settings.url,
        "POSTDATE_PREFIX": settings.prefix,
        "POSTDATE_GRACE_PERIOD": "5",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}",
        "PYTHONPATH": str(ROOT),
    }
    return env


async def test_supervisord_runs_the_consumers_and_stops_them_without_loss(
    settings: Settings,
    cleanup: Cleanup,
    supervisor_env: dict[str, str],
    tmp_path: Path,
    connection: AbstractRobustConnection,
) -> None:
    sys.path.insert(0, str(ROOT))
    example = importlib.import_module("consumers.example")
    for module in ("consumers.example", "consumers.expire_reservation"):
        app = importlib.import_module(module).app
        cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    queue = example.Remind.queue
    log_path = tmp_path / "supervisord.log"
    # A pipe, not a file: each program's /dev/stdout reopens the target, and reopened
    # regular files would overwrite each other from offset 0.
    supervisord = subprocess.Popen(
        [str(BIN / "supervisord"), "-c", str(CONF)],
        env=supervisor_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    copier = threading.Thread(target=_copy, args=(supervisord, log_path), daemon=True)
    copier.start()
    try:
        await eventually(
            lambda: supervisorctl(supervisor_env, "status").count("RUNNING") == 5,
            60,
            "5 processes RUNNING",
            interval=0.2,  # each poll runs supervisorctl
        )
        # RUNNING is supervisord's view; the queue exists once a worker declared it.
        await wait_for_consumer(settings.url, queue, consumers=2)
        async with Publisher(settings=settings, connection_name="pytest supervisord") as pub:
            ids = await pub.send_many(
                (example.Remind(text=f"r{n}"), timedelta(seconds=(n % 50) / 10)) for n in range(400)
            )
        await eventually(lambda: len(handled_ids(log_path, queue)) >= 100, 60, "100 handled")
        stopped = supervisorctl(supervisor_env, "stop", "all")
        assert stopped.count("stopped") == 5, stopped
        handled = handled_ids(log_path, queue)
        assert handled <= set(ids)
        remaining = len(set(ids) - handled)
        leftovers = await collect(connection, queue, remaining, timeout=15) if remaining else []
        assert handled | {item.message.message_id for item in leftovers} == set(ids)
        stops = [e for e in log_events(log_path) if e.get("event") == "worker.stopped"]
        assert len(stops) == 4  # every worker stopped cleanly on SIGTERM
    finally:
        supervisorctl(supervisor_env, "shutdown")
        try:
            supervisord.wait(30)
        except subprocess.TimeoutExpired:
            supervisord.kill()
        copier.join(10)
        if supervisord.stdout is not None:
            supervisord.stdout.close()


def _copy(process: subprocess.Popen[bytes], path: Path) -> None:
    assert process.stdout is not None
    with path.open("wb") as sink:
        for line in process.stdout:
            sink.write(line)
            sink.flush()
