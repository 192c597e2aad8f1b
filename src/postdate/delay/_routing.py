"""Scheduling as pure values: when a command is due, and where it is published for it.

Every publish of a scheduled command (a send, an outbox row, a message back from the
worker or the catch-all queue) goes through :func:`plan`, at the moment it is published:
the ladder's TTLs start when the broker enqueues a message, so the delay it carries is
the time left until its exact due time *then*. Nothing else computes a route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from postdate._clock import require_aware
from postdate._errors import DelayError
from postdate.broker._topology import Names
from postdate.delay import _ladder as ladder
from postdate.publish._envelope import Envelope

# A publish this soon after its envelope was made counts its delay from the envelope's
# making: a 3 s send written 2 ms later goes through 3 s of ladder, not 2 s plus a
# second held by the worker (the ladder may then deliver up to this much after due).
# Later publishes (a blocked connection, a slow window, an outbox row) count from now.
PLAN_LEEWAY = timedelta(milliseconds=20)
# The ladder delivers a command this much before its due time (plus the sub-second
# remainder), and the worker holds it until due without taking a handler slot: each
# hop's dead-lettering, and the queueing of a burst, then happen within the hold instead
# of after the due time. A worker holds at most LADDER_LEAD + 1 s (see dispatch). 3 s,
# not 1 s: of 20,000 commands due in the same second, the last reached the command queue
# about 3 s after the first (bench.timing), so with 1 s it arrived after its due time.
LADDER_LEAD = timedelta(seconds=3)

When = timedelta | float | int | datetime
"""A delay (timedelta or seconds) or an aware due datetime."""


@dataclass(frozen=True)
class Route:
    """Where one publish goes: ``exchange`` ("" is the default exchange) and routing key(s);
    ``delay_ms`` for the delayed-message plugin's exchange (its ``x-delay`` header)."""

    exchange: str
    routing_key: str
    cc: tuple[str, ...] = ()
    delay_ms: int | None = None

    @property
    def mandatory(self) -> bool:
        """Whether the publish is mandatory: always, but into the plugin's exchange, which
        routes nothing while it holds a message (a mandatory publish would come back)."""
        return self.delay_ms is None


def due_time(now: datetime, delay: When | None = None, at: datetime | None = None) -> datetime:
    """The exact due time of a command scheduled at ``now``, from ``delay`` or ``at``.

    No delay and no ``at`` means now; a datetime given as ``delay`` counts as ``at``.

    Raises:
        DelayError: both given, a negative delay, a naive ``at``, or a due time further
            away than the ladder reaches.
    """
    if delay is not None and at is not None:
        raise DelayError("give either delay= or at=, not both")
    if isinstance(delay, datetime):
        delay, at = None, delay
    if at is not None:
        if not isinstance(at, datetime):
            raise DelayError(f"at={at!r} is not a datetime")
        due = require_aware(at, "at=")
    elif delay is None:
        due = now
    else:
        span = _span(delay)
        if span < timedelta(0):
            raise DelayError(f"delay {span} is negative; for 'at once' give delay=0")
        due = now + span
    ladder.ladder_seconds(due, now)  # refuses a due time beyond the ladder's reach
    return due


def _span(delay: object) -> timedelta:
    """``delay`` (a timedelta or a finite number of seconds) as a timedelta.

    Raises:
        DelayError: anything else (a string, a bool, NaN, infinity, ...).
    """
    if isinstance(delay, timedelta):
        return delay
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise DelayError(
            f"delay={delay!r} is not a timedelta, a number of seconds or an aware datetime"
        )
    if not math.isfinite(delay):
        raise DelayError(f"delay={delay!r} is not a finite number of seconds")
    if delay < 0:
        raise DelayError(f"delay {delay} s is negative; for 'at once' give delay=0")
    if delay > ladder.MAX_DELAY_SECONDS + 1:
        raise DelayError(
            f"delay {delay} s is above the ladder's maximum {ladder.MAX_DELAY_SECONDS} s"
        )
    return timedelta(seconds=delay)


def route(names: Names, queue: str, seconds: int) -> Route:
    """Route a delay of ``seconds`` whole seconds to ``queue``.

    Zero goes to the deliver exchange at once. Otherwise the message enters the ladder
    queue of its highest set bit by the default exchange (no topic exchange on the publish
    path), carrying its hop keys in CC: dead-lettering routes on the CC keys too, so
    each hop's exchange finds the next level from them.

    Raises:
        DelayError: ``seconds`` is negative or above the ladder's maximum.
    """
    if seconds == 0:
        return Route(names.deliver, ladder.deliver_key(queue))
    return Route("", names.delay_queue(seconds.bit_length() - 1), ladder.hop_keys(seconds, queue))


def plan(names: Names, envelope: Envelope, now: datetime) -> Route:
    """Where ``envelope`` is published at ``now`` to reach its queue at its due time.

    The ladder carries the whole seconds left until :data:`LADDER_LEAD` before the due
    time (counted from the envelope's making within :data:`PLAN_LEEWAY` of it); the
    consumer holds the rest.
    A due time in the past routes for delivery at once.

    Raises:
        DelayError: the due time is further away than the ladder reaches.
    """
    seconds = ladder.ladder_seconds(envelope.due_at - LADDER_LEAD, delay_start(envelope, now))
    return route(names, envelope.queue, seconds)


def delay_start(envelope: Envelope, now: datetime) -> datetime:
    """The moment a delay published at ``now`` counts from: the envelope's making if that
    was within :data:`PLAN_LEEWAY` before ``now``, else ``now``."""
    made = envelope.timestamp
    return made if timedelta(0) <= now - made <= PLAN_LEEWAY else now


def to_queue(queue: str) -> Route:
    """Straight into ``queue`` by the default exchange (retry, poison and replayed copies)."""
    return Route("", queue)
