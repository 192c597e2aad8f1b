"""The health app and the gauges without a broker: probes answered from a loop of their
own in a thread, lateness apart from retry waits, postdate_connected."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from postdate import MetricsPortUnavailable
from postdate.observe import _metrics as metrics
from postdate.observe._health import Heartbeat, Probes, serve_health


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own (the worker's, as the probes see it)."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    running.close()


def probes(loop: asyncio.AbstractEventLoop, problem: str | None = None) -> Probes:
    async def readiness() -> str | None:
        return problem

    return Probes(Heartbeat(), readiness, loop)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_health_server_answers_each_path(loop: asyncio.AbstractEventLoop) -> None:
    server = serve_health(0, probes(loop), host="127.0.0.1")
    try:
        assert await asyncio.to_thread(get, server.port, "/healthz") == (200, "alive\n")
        assert await asyncio.to_thread(get, server.port, "/readyz") == (200, "ready\n")
        assert await asyncio.to_thread(get, server.port, "/other") == (404, "not found\n")
        status, page = await asyncio.to_thread(get, server.port, "/metrics")
        assert status == 200
        assert "# TYPE postdate_connected gauge" in page
    finally:
        await server.close()


def test_not_ready_gives_the_reason(loop: asyncio.AbstractEventLoop) -> None:
    assert probes(loop, "not connected").not_ready() == "not connected"
    assert probes(loop).not_ready() is None


def test_a_busy_loop_is_not_ready(loop: asyncio.AbstractEventLoop) -> None:
    loop.call_soon_threadsafe(time.sleep, 1.0)  # a handler blocking the event loop
    assert probes(loop).not_ready() == "event loop not responding"
    # Let the probe's coroutine run once the loop is free: stopping the loop first would
    # destroy it pending, which pytest reports as an error in whichever test comes next.
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01), loop).result(10)


def test_a_closed_loop_is_stopping() -> None:
    closed = asyncio.new_event_loop()
    closed.close()
    assert probes(closed).not_ready() == "stopping"


def test_liveness_fails_once_the_heartbeat_is_stale(loop: asyncio.AbstractEventLoop) -> None:
    stale = Probes(
        Heartbeat(stale_after=30, last=time.monotonic() - 45), probes(loop).readiness, loop
    )
    problem = stale.not_live()
    assert problem is not None
    assert problem.startswith("event loop stalled for 4")
    assert probes(loop).not_live() is None


async def test_heartbeat_beats_while_the_loop_runs() -> None:
    heartbeat = Heartbeat(interval=0.01, stale_after=0.05, last=time.monotonic() - 1)
    assert heartbeat.stalled_for() is not None
    beating = asyncio.create_task(heartbeat.run())
    await asyncio.sleep(0.03)
    assert heartbeat.stalled_for() is None
    beating.cancel()
    await asyncio.wait([beating])


def test_a_busy_port_is_one_line_naming_the_setting(loop: asyncio.AbstractEventLoop) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortUnavailable, match=f"port {port} .*POSTDATE_METRICS_PORT"):
            serve_health(port, probes(loop))


def test_first_attempts_count_as_lateness_retries_as_retry_wait() -> None:
    queue = f"q{uuid.uuid4().hex}"
    metrics.observe_start(queue, 1, 0.2)
    metrics.observe_start(queue, 2, 60.0)
    metrics.observe_start(queue, 3, 120.0)
    labels = {"queue": queue}
    assert REGISTRY.get_sample_value("postdate_lateness_seconds_count", labels) == 1
    assert REGISTRY.get_sample_value("postdate_lateness_seconds_sum", labels) == 0.2
    assert REGISTRY.get_sample_value("postdate_retry_wait_seconds_count", labels) == 2
    assert REGISTRY.get_sample_value("postdate_retry_wait_seconds_sum", labels) == 180.0


@pytest.fixture
def untracked() -> Iterator[None]:
    """No connection tracked but this test's: a worker that an earlier test left running
    (one cut off by a timeout, say) would stay tracked and hold postdate_connected at 0."""
    others = dict(metrics._connected_sources)
    metrics._connected_sources.clear()
    yield
    metrics._connected_sources.update(others)


@pytest.mark.usefixtures("untracked")
def test_connected_is_1_only_while_every_tracked_connection_is_up() -> None:
    first, second = object(), object()
    up = {"second": True}
    try:
        assert REGISTRY.get_sample_value("postdate_connected") == 0.0  # nothing tracked
        metrics.track_connected(first, lambda: True)
        assert REGISTRY.get_sample_value("postdate_connected") == 1.0
        metrics.track_connected(second, lambda: up["second"])
        up["second"] = False
        assert REGISTRY.get_sample_value("postdate_connected") == 0.0
        metrics.untrack_connected(second)
        assert REGISTRY.get_sample_value("postdate_connected") == 1.0
    finally:
        metrics.untrack_connected(first)
        metrics.untrack_connected(second)
    assert REGISTRY.get_sample_value("postdate_connected") == 0.0
