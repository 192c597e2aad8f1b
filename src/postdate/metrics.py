"""Prometheus metrics for workers (exposed when a metrics port is set)."""

from __future__ import annotations

import functools
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

MESSAGES = Counter(
    "postdate_messages",
    "Messages processed by outcome",
    ["queue", "type", "outcome"],
)
HANDLE_SECONDS = Histogram(
    "postdate_handle_seconds",
    "Time from receipt to settlement, hold excluded",
    ["queue", "type"],
)
LATENESS_SECONDS = Histogram(
    "postdate_lateness_seconds",
    "Delivery time minus due time when a handler starts",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)


# Label lookups hash and lock on every call; a worker settles thousands of messages a
# second over a handful of label sets, so keep the children.
@functools.cache
def messages(queue: str, kind: str, outcome: str) -> Counter:
    """The counter of settled messages with these labels."""
    return MESSAGES.labels(queue, kind, outcome)


@functools.cache
def handle_seconds(queue: str, kind: str) -> Histogram:
    """The histogram of handling durations with these labels."""
    return HANDLE_SECONDS.labels(queue, kind)


@functools.cache
def lateness_seconds(queue: str) -> Histogram:
    """The histogram of how late after their due time handlers got messages of ``queue``."""
    return LATENESS_SECONDS.labels(queue)


def serve_metrics(port: int) -> WSGIServer:
    """Expose the process's metrics on ``http://0.0.0.0:port/metrics`` from a thread;
    port 0 picks a free one (``server.server_port``). Stop it with ``server.shutdown()``.

    Raises:
        OSError: the port cannot be bound.
    """
    server, _ = start_http_server(port)
    return server
