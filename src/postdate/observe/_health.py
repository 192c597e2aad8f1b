"""A worker's health on its metrics port: ``/metrics``, ``/healthz`` and ``/readyz``.

A small WSGI app on wsgiref, served from a thread:

* ``/metrics``: the Prometheus exposition of this process.
* ``/healthz`` (liveness): 200 while the worker's event loop keeps refreshing a
  :class:`Heartbeat`; 503 once it has not for :data:`LIVENESS_STALE_SECONDS`.
* ``/readyz`` (readiness): 200 when the worker's readiness check, run on its event loop,
  finds nothing wrong; 503 with the reason (e.g. ``not connected``) otherwise, or when the
  loop does not answer within :data:`READINESS_TIMEOUT_SECONDS`.
* anything else: 404.

It also holds what feeds the worker's broker-side gauges: :func:`poll_poison_depths`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from postdate._errors import MetricsPortUnavailable
from postdate.broker._declare import queue_states
from postdate.broker._topology import poison_queue
from postdate.observe import _metrics as metrics
from postdate.observe._logs import get_logger

HEARTBEAT_SECONDS = 1.0
LIVENESS_STALE_SECONDS = 30.0
READINESS_TIMEOUT_SECONDS = 0.5
POISON_POLL_SECONDS = 15.0
POISON_READ_TIMEOUT_SECONDS = 5.0

Readiness = Callable[[], Coroutine[Any, Any, str | None]]
"""Why the worker is not ready (a short text), or None when it is."""

log = get_logger(__name__)


@dataclass
class Heartbeat:
    """A timestamp the event loop refreshes every ``interval`` s while it runs (:meth:`run`)."""

    interval: float = HEARTBEAT_SECONDS
    stale_after: float = LIVENESS_STALE_SECONDS
    last: float = field(default_factory=time.monotonic)

    def stalled_for(self) -> float | None:
        """Seconds since the last beat once that is over ``stale_after``, else None."""
        since = time.monotonic() - self.last
        return since if since > self.stale_after else None

    async def run(self) -> None:
        """Beat until cancelled."""
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(self.interval)


@dataclass
class Probes:
    """Answers liveness and readiness from the HTTP thread for a worker's event ``loop``."""

    heartbeat: Heartbeat
    readiness: Readiness
    loop: asyncio.AbstractEventLoop
    timeout: float = READINESS_TIMEOUT_SECONDS

    def not_live(self) -> str | None:
        """Why the worker is not alive, or None when its event loop beats."""
        stalled = self.heartbeat.stalled_for()
        return None if stalled is None else f"event loop stalled for {stalled:.0f} s"

    def not_ready(self) -> str | None:
        """Why the worker is not ready, or None; its readiness check runs on its loop."""
        check = self.readiness()
        try:
            answer = asyncio.run_coroutine_threadsafe(check, self.loop)
        except RuntimeError:  # the loop is closed
            check.close()
            return "stopping"
        try:
            return answer.result(self.timeout)
        except TimeoutError:
            answer.cancel()
            return "event loop not responding"
        except Exception as exc:  # a readiness check that failed is a no
            return f"readiness check failed: {exc!r}"


def health_app(probes: Probes, registry: CollectorRegistry = REGISTRY) -> WSGIApplication:
    """The WSGI app of ``/metrics`` (``registry``), ``/healthz`` and ``/readyz``."""
    exposition = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            answer: Iterable[bytes] = exposition(environ, start_response)
            return answer
        if path == "/healthz":
            return _probe(start_response, probes.not_live(), "alive")
        if path == "/readyz":
            return _probe(start_response, probes.not_ready(), "ready")
        return _text(start_response, "404 Not Found", "not found")

    return app


def _probe(start_response: StartResponse, problem: str | None, fine: str) -> list[bytes]:
    if problem is None:
        return _text(start_response, "200 OK", fine)
    return _text(start_response, "503 Service Unavailable", problem)


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = f"{body}\n".encode()
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))],
    )
    return [data]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: no access log on stderr."""


class HealthServer:
    """The HTTP server of :func:`health_app`, running in a daemon thread."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"postdate-health-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on (the bound one when 0 was asked for)."""
        return int(self._server.server_port)

    async def close(self) -> None:
        """Stop serving and release the port."""
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()


def serve_health(port: int, probes: Probes, host: str = "0.0.0.0") -> HealthServer:
    """Serve :func:`health_app` on ``http://host:port``; port 0 picks a free one.

    Raises:
        MetricsPortUnavailable: the port cannot be bound (in use, or not allowed).
    """
    try:
        server = make_server(
            host, port, health_app(probes), server_class=_Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MetricsPortUnavailable(
            f"cannot serve metrics on port {port} ({reason}): set POSTDATE_METRICS_PORT to a "
            "free port, or unset it to serve no metrics"
        ) from exc
    return HealthServer(server)


async def poll_poison_depths(
    connection: AbstractRobustConnection,
    queues: Sequence[str],
    interval: float = POISON_POLL_SECONDS,
) -> None:
    """Until cancelled: every ``interval`` s, set ``postdate_poison_depth`` of each queue."""
    while True:
        await read_poison_depths(connection, queues)
        await asyncio.sleep(interval)


async def read_poison_depths(connection: AbstractRobustConnection, queues: Sequence[str]) -> None:
    """Set ``postdate_poison_depth{queue}`` to the messages ready in each queue's poison
    queue. A depth that cannot be read keeps its last value (logged at debug)."""
    for queue in queues:
        try:
            depth = await asyncio.wait_for(
                _ready_messages(connection, poison_queue(queue)), POISON_READ_TIMEOUT_SECONDS
            )
        except Exception as exc:
            log.debug("poison_depth.unread", queue=queue, error=repr(exc))
        else:
            metrics.poison_depth(queue).set(depth)


async def _ready_messages(connection: AbstractRobustConnection, name: str) -> int:
    """Messages ready in queue ``name`` (a passive declare on a channel of its own).

    Raises:
        ConnectionError: the connection is down, or the queue is missing.
    """
    if connection.is_closed:
        raise ConnectionError("not connected")
    state = (await queue_states(connection, [name]))[name]
    if state is None:
        raise ConnectionError(f"queue {name!r} does not exist")
    return state.messages
