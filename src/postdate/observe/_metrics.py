"""Prometheus metrics for workers (served with the health probes when a metrics port is set).

What a worker updates once per message (messages, handle time, lateness or retry wait,
in flight) are :mod:`postdate.observe._families`: the same samples as prometheus_client's, at a
fraction of the cost per update.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from prometheus_client import Gauge, Histogram

from postdate.observe._families import (
    CounterChild,
    CounterFamily,
    GaugeChild,
    GaugeFamily,
    HistogramChild,
    HistogramFamily,
)

MESSAGES = CounterFamily(
    "postdate_messages",
    "Messages processed by outcome",
    ["queue", "type", "outcome"],
)
HANDLE_SECONDS = HistogramFamily(
    "postdate_handle_seconds",
    "Time from receipt to settlement, hold excluded",
    ["queue", "type"],
    buckets=Histogram.DEFAULT_BUCKETS,
)
LATENESS_SECONDS = HistogramFamily(
    "postdate_lateness_seconds",
    "Delivery time minus due time when a handler starts a first attempt (retries are in "
    "postdate_retry_wait_seconds)",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
RETRY_WAIT_SECONDS = HistogramFamily(
    "postdate_retry_wait_seconds",
    "Delivery time minus the command's due time when a handler starts a retry (attempt > 1): "
    "a tier retry keeps the original due time, so this is every back-off so far plus any "
    "lateness; a Retry(after=...) beyond the last tier counts from its new due time",
    ["queue"],
    buckets=(0.1, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
)
IN_FLIGHT = GaugeFamily(
    "postdate_in_flight",
    "Deliveries this process received and has not settled yet (held ones included)",
    ["queue"],
)
HELD = Gauge(
    "postdate_held",
    "Deliveries this process holds until their due time (up to a second early)",
    ["queue"],
)
CONNECTED = Gauge(
    "postdate_connected",
    "1 while the consuming connection of every running worker of this process is open",
)
POISON_DEPTH = Gauge(
    "postdate_poison_depth",
    "Messages ready in the poison queue of a command queue (read every 15 s)",
    ["queue"],
)


# Label lookups hash and lock on every call; a worker settles thousands of messages a
# second over a handful of label sets, so keep the children.
@functools.cache
def messages(queue: str, kind: str, outcome: str) -> CounterChild:
    """The counter of settled messages with these labels."""
    return MESSAGES.labels(queue, kind, outcome)


@functools.cache
def handle_seconds(queue: str, kind: str) -> HistogramChild:
    """The histogram of handling durations with these labels."""
    return HANDLE_SECONDS.labels(queue, kind)


@functools.cache
def lateness_seconds(queue: str) -> HistogramChild:
    """The histogram of how late after their due time handlers got first attempts of ``queue``."""
    return LATENESS_SECONDS.labels(queue)


@functools.cache
def retry_wait_seconds(queue: str) -> HistogramChild:
    """The histogram of how long after their due time handlers got retries of ``queue``."""
    return RETRY_WAIT_SECONDS.labels(queue)


@functools.cache
def in_flight(queue: str) -> GaugeChild:
    """The gauge of deliveries of ``queue`` received and not yet settled."""
    return IN_FLIGHT.labels(queue)


@functools.cache
def held(queue: str) -> Gauge:
    """The gauge of deliveries of ``queue`` held until their due time."""
    return HELD.labels(queue)


@functools.cache
def poison_depth(queue: str) -> Gauge:
    """The gauge of messages parked in the poison queue of command queue ``queue``."""
    return POISON_DEPTH.labels(queue)


def observe_start(queue: str, attempt: int, seconds_after_due: float) -> None:
    """Record how long after its due time a handler got a delivery of ``queue``: a first
    attempt's lateness, or a retry's wait (which includes its back-off)."""
    if attempt <= 1:
        lateness_seconds(queue).observe(seconds_after_due)
    else:
        retry_wait_seconds(queue).observe(seconds_after_due)


# postdate_connected is read at scrape time from the workers' own connection state.
_connected_lock = threading.Lock()
_connected_sources: dict[object, Callable[[], bool]] = {}


def track_connected(owner: object, is_connected: Callable[[], bool]) -> None:
    """Make ``is_connected`` (thread-safe, cheap) part of ``postdate_connected`` until
    :func:`untrack_connected` is called with the same ``owner``."""
    with _connected_lock:
        _connected_sources[owner] = is_connected


def untrack_connected(owner: object) -> None:
    """Stop reading the connection state of ``owner`` (no-op if it was not tracked)."""
    with _connected_lock:
        _connected_sources.pop(owner, None)


def _all_connected() -> float:
    with _connected_lock:
        sources = tuple(_connected_sources.values())
    return 1.0 if sources and all(source() for source in sources) else 0.0


CONNECTED.set_function(_all_connected)
