"""Topology as values: small pure functions compute exchanges, queues and bindings.

:mod:`postdate.broker._declare` applies these values to a broker, or renders them as a RabbitMQ
definitions file (``rabbit/definitions.json``), so code and broker config never drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, TypedDict

from postdate._errors import InvalidArgument
from postdate.delay._ladder import LEVELS, deliver_key, hop_key

QueueArguments = TypedDict(
    "QueueArguments",
    {
        "x-queue-type": str,
        "x-message-ttl": int,
        "x-dead-letter-exchange": str,
        "x-dead-letter-routing-key": str,
        "x-dead-letter-strategy": str,
        "x-overflow": str,
        "x-delivery-limit": int,
    },
    total=False,
)

ExchangeArguments = TypedDict(
    "ExchangeArguments", {"alternate-exchange": str, "x-delayed-type": str}, total=False
)


class QueueType(StrEnum):
    """``x-queue-type``: every postdate queue is a replicated quorum queue."""

    QUORUM = "quorum"


class Overflow(StrEnum):
    """``x-overflow``: a full ladder level refuses publishes (nacks) rather than drop."""

    REJECT_PUBLISH = "reject-publish"


class DeadLetterStrategy(StrEnum):
    """``x-dead-letter-strategy``: at-least-once, so a hop never loses a message."""

    AT_LEAST_ONCE = "at-least-once"


class ExchangeType(StrEnum):
    """The exchange types postdate declares."""

    TOPIC = "topic"
    FANOUT = "fanout"
    DELAYED = "x-delayed-message"  # the delayed-message plugin's (see postdate.delay._plugin)


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue to declare: its name and x- arguments."""

    name: str
    arguments: QueueArguments


@dataclass(frozen=True)
class ExchangeSpec:
    """A durable exchange to declare: its name, type and arguments."""

    name: str
    type: ExchangeType
    arguments: ExchangeArguments = field(default_factory=lambda: ExchangeArguments())


@dataclass(frozen=True)
class BindingSpec:
    """A binding from exchange ``source`` to a queue (or, ``to_exchange``, an exchange)."""

    source: str
    destination: str
    routing_key: str
    to_exchange: bool = False


@dataclass(frozen=True)
class Topology:
    """Exchanges, queues and bindings as values; ``+`` joins two topologies."""

    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    bindings: tuple[BindingSpec, ...] = ()

    def __add__(self, other: Topology) -> Topology:
        return Topology(
            self.exchanges + other.exchanges,
            self.queues + other.queues,
            self.bindings + other.bindings,
        )


@dataclass(frozen=True)
class Names:
    """Every broker object name postdate uses, under one prefix."""

    prefix: str

    def delay_queue(self, level: int) -> str:
        """Ladder level ``level``'s queue (TTL ``2**level`` s)."""
        return f"{self.prefix}.delay.{level}"

    def after_exchange(self, level: int) -> str:
        """The exchange ladder level ``level`` dead-letters into."""
        return f"{self.prefix}.after.{level}"

    @property
    def deliver(self) -> str:
        """The topic exchange that routes a due command to its command queue."""
        return f"{self.prefix}.deliver"

    @property
    def delayed(self) -> str:
        """The delayed-message plugin's exchange (the plugin backend's only object)."""
        return f"{self.prefix}.delayed"

    @property
    def unroutable(self) -> str:
        """Name of both the alternate (fanout) exchange and its catch-all queue."""
        return f"{self.prefix}.unroutable"


def retry_queue(queue: str, delay: timedelta) -> str:
    """The retry tier queue of command queue ``queue`` that holds copies for ``delay``.

    Raises:
        InvalidArgument: ``delay`` is not a positive whole number of seconds.
    """
    return f"{queue}.retry.{format_duration(delay)}"


def poison_queue(queue: str) -> str:
    """The poison queue of command queue ``queue``."""
    return f"{queue}.poison"


def format_duration(delay: timedelta) -> str:
    """``10s``, ``1m``, ``90s``, ``2h``, ``1d``: the largest unit that divides exactly.

    Raises:
        InvalidArgument: ``delay`` is not a positive whole number of seconds.
    """
    seconds = int(delay.total_seconds())
    if seconds <= 0 or seconds != delay.total_seconds():
        raise InvalidArgument(f"retry delay {delay} must be a positive whole number of seconds")
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def quorum(**extra: Any) -> QueueArguments:
    """Arguments of a quorum queue, plus ``extra``."""
    arguments: QueueArguments = {"x-queue-type": QueueType.QUORUM.value}
    arguments.update(extra)  # type: ignore[typeddict-item]
    return arguments


# Operators read parked messages by getting them unacked and closing the channel; every
# such return counts as a delivery. RabbitMQ 4 gives quorum queues a default limit of 20
# and drops what exceeds it when no dead-letter exchange is set: parking queues state a
# limit that is never reached instead.
PARKING_DELIVERY_LIMIT = 2**31 - 1


def parking() -> QueueArguments:
    """A queue where messages wait for an operator: nothing expires or is dropped."""
    return quorum(**{"x-delivery-limit": PARKING_DELIVERY_LIMIT})


def dead_lettering(exchange: str, routing_key: str | None = None) -> dict[str, Any]:
    """At-least-once dead-lettering: the message leaves only once the target confirmed it."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-strategy": DeadLetterStrategy.AT_LEAST_ONCE.value,
        "x-overflow": Overflow.REJECT_PUBLISH.value,
    }
    if routing_key is not None:
        arguments["x-dead-letter-routing-key"] = routing_key
    return arguments


def ladder_topology(prefix: str) -> Topology:
    """The delay ladder, the deliver exchange and its catch-all for unroutable commands."""
    names = Names(prefix)
    exchanges = [
        ExchangeSpec(names.unroutable, ExchangeType.FANOUT),
        ExchangeSpec(names.deliver, ExchangeType.TOPIC, {"alternate-exchange": names.unroutable}),
    ]
    queues = [QueueSpec(names.unroutable, parking())]
    bindings = [BindingSpec(names.unroutable, names.unroutable, "")]
    for level in range(LEVELS):
        after = names.after_exchange(level)
        exchanges.append(ExchangeSpec(after, ExchangeType.TOPIC))
        queues.append(
            QueueSpec(
                names.delay_queue(level),
                quorum(**{"x-message-ttl": 2**level * 1000}, **dead_lettering(after)),
            )
        )
        for lower in range(level):
            bindings.append(BindingSpec(after, names.delay_queue(lower), hop_key(level, lower)))
        bindings.append(BindingSpec(after, names.deliver, hop_key(level, None), to_exchange=True))
    return Topology(tuple(exchanges), tuple(queues), tuple(bindings))


DEFAULT_RETRY_TIERS = (
    timedelta(seconds=10),
    timedelta(minutes=1),
    timedelta(minutes=10),
    timedelta(hours=1),
)


def command_queue_topology(
    prefix: str,
    queue: str,
    *,
    retry_tiers: tuple[timedelta, ...] = DEFAULT_RETRY_TIERS,
    delivery_limit: int = 5,
) -> Topology:
    """A command queue bound to the deliver exchange, its retry tiers and its poison queue.

    The command queue's delivery limit dead-letters a message that keeps killing its
    consumer to the poison queue; each retry tier holds copies for one fixed TTL and
    dead-letters them back to the command queue.
    """
    poison = poison_queue(queue)
    queues = [
        QueueSpec(
            queue,
            quorum(**{"x-delivery-limit": delivery_limit}, **dead_lettering("", poison)),
        ),
        QueueSpec(poison, parking()),
    ]
    queues.extend(
        QueueSpec(
            retry_queue(queue, tier),
            quorum(
                **{"x-message-ttl": int(tier.total_seconds() * 1000)},
                **dead_lettering("", queue),
            ),
        )
        for tier in retry_tiers
    )
    binding = BindingSpec(Names(prefix).deliver, queue, deliver_key(queue))
    return Topology(queues=tuple(queues), bindings=(binding,))
