"""The delayed-message plugin backend as pure values: its exchange, bindings and routes.

The plugin (``rabbitmq_delayed_message_exchange``) adds the exchange type
``x-delayed-message``: a message published to it with an ``x-delay`` header (ms) is held
by the plugin, then routed as its ``x-delayed-type`` exchange would route it. Here that is
``P.delayed``, a topic exchange in disguise. A publish carries :func:`plugin_key` (the
ladder's deliver key, ``~>orders.expire``) and each command queue is bound with that very
key: a literal key of words that queue names cannot hold a wildcard in, so it matches
exactly one queue's binding and ``a.b`` never catches ``b``'s commands.

Its documented limits, and what this module does about them:

- a delay above 2^32-1 ms is routed at once: refused (:class:`DelayError`, naming the
  ladder);
- it cannot honour ``mandatory`` and drops what has no binding when it routes: the
  publish is not mandatory, and the publisher binds a queue before its first send to it
  (:func:`queue_binding`). No alternate exchange: the plugin routes nothing while it
  holds a message, so one would receive every delayed message at once;
- one copy on one node, lost with the node, meant for "a day or two": a longer delay
  logs a warning naming the ladder, once per queue per process.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from postdate._errors import DelayError
from postdate.broker._topology import (
    BindingSpec,
    ExchangeSpec,
    ExchangeType,
    Names,
    Topology,
)
from postdate.delay import _ladder as ladder
from postdate.delay import _routing as scheduling
from postdate.delay._routing import LADDER_LEAD, Route
from postdate.observe._logs import get_logger
from postdate.publish._envelope import Envelope

# The plugin routes a message with a larger x-delay at once (Erlang's longest timer).
MAX_DELAY_MS = 2**32 - 1
# The plugin's own README: meant for delays of "a day or two at most".
LONG_DELAY = timedelta(days=2)
# How the delayed exchange routes once a delay is over: as P.deliver does (see above).
DELAYED_TYPE = ExchangeType.TOPIC

_MILLISECOND = timedelta(milliseconds=1)
_warned_queues: set[str] = set()

log = get_logger(__name__)


def delayed_exchange(prefix: str) -> ExchangeSpec:
    """``P.delayed``: type ``x-delayed-message``, routing as a topic exchange."""
    return ExchangeSpec(
        Names(prefix).delayed, ExchangeType.DELAYED, {"x-delayed-type": DELAYED_TYPE.value}
    )


def plugin_key(queue: str) -> str:
    """The key ``P.delayed`` routes into command queue ``queue``: both the routing key of
    a publish and the binding key of the queue (the deliver key ``P.deliver`` uses)."""
    return ladder.deliver_key(queue)


def queue_binding(prefix: str, queue: str) -> BindingSpec:
    """The binding of command queue ``queue`` on ``P.delayed``, by :func:`plugin_key`."""
    return BindingSpec(Names(prefix).delayed, queue, plugin_key(queue))


def plugin_topology(prefix: str, queues: tuple[str, ...] = ()) -> Topology:
    """``P.delayed`` and the bindings of ``queues`` on it (queues declared elsewhere)."""
    bindings = tuple(queue_binding(prefix, queue) for queue in queues)
    return Topology(exchanges=(delayed_exchange(prefix),), bindings=bindings)


def delay_ms(envelope: Envelope, now: datetime) -> int:
    """The ``x-delay`` of ``envelope`` published at ``now``: the whole milliseconds left
    until :data:`~postdate.delay._routing.LADDER_LEAD` before its due time, rounded down and
    at least 0 (the ladder's lead, so the worker's hold works alike: never early, and no
    later than the ladder would be). The delay counts from the moment the ladder's would
    (:func:`~postdate.delay._routing.delay_start`).

    Raises:
        DelayError: the delay is above :data:`MAX_DELAY_MS` (the plugin would deliver it
            at once); the message names the ladder backend, which reaches 8.5 years.
    """
    start = scheduling.delay_start(envelope, now)
    millis = max(0, math.floor((envelope.due_at - LADDER_LEAD - start) / _MILLISECOND))
    if millis > MAX_DELAY_MS:
        raise DelayError(
            f"delay {timedelta(milliseconds=millis)} to {envelope.queue!r} is above the "
            f"delayed-message plugin's maximum of 2^32-1 ms "
            f"({timedelta(milliseconds=MAX_DELAY_MS)}); use the ladder backend "
            f"(POSTDATE_BACKEND=ladder), which reaches {ladder.MAX_DELAY_SECONDS} s"
        )
    return millis


def route(names: Names, envelope: Envelope, now: datetime) -> Route:
    """Where ``envelope`` is published at ``now`` through the plugin.

    A delay of 0 goes straight to ``P.deliver`` (mandatory, as the ladder sends it);
    any other into ``P.delayed`` with :func:`plugin_key` and ``x-delay``. A delay above
    :data:`LONG_DELAY` logs a warning naming the ladder (:func:`warn_long_delay`).

    Raises:
        DelayError: see :func:`delay_ms`.
    """
    millis = delay_ms(envelope, now)
    if millis == 0:
        return scheduling.route(names, envelope.queue, 0)
    if millis > LONG_DELAY / _MILLISECOND:
        warn_long_delay(envelope.queue, timedelta(milliseconds=millis))
    return Route(names.delayed, plugin_key(envelope.queue), delay_ms=millis)


def warn_long_delay(queue: str, delay: timedelta) -> bool:
    """Log, once per queue per process, that ``delay`` is past the plugin's intended range;
    returns whether it logged."""
    if queue in _warned_queues:
        return False
    _warned_queues.add(queue)
    log.warning(
        "plugin.long_delay",
        queue=queue,
        delay=str(delay),
        detail=f"the delayed-message plugin is meant for delays of {LONG_DELAY.days} days at "
        "most: it keeps one copy on one node, lost with the node (measured: 5 of 200 lost "
        "on a node kill). For long delays use the ladder backend (POSTDATE_BACKEND=ladder): "
        "replicated quorum queues. Logged once per queue.",
    )
    return True
