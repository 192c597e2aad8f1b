"""Apply topology values to a broker, idempotently, with typed errors for mismatches; or
render them as a RabbitMQ definitions file."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from postdate.errors import TopologyMismatch
from postdate.topology import ExchangeSpec, QueueSpec, Topology

# "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value '2000'
#  of type 'signedint' but current is none" ('durable' and 'type' come as quoted words)
_VALUE = r"none|the value '(?P<{0}v>.*?)' of type '(?P<{0}t>\w+)'|'(?P<{0}q>.*?)'"
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for \w+ '.*?' in vhost '.*?': "
    r"received (?:" + _VALUE.format("r") + r") but current is (?:" + _VALUE.format("c") + r")",
)
_MAX_PROBES = 16
_ABSENT = object()

Spec = QueueSpec | ExchangeSpec


async def declare_topology(connection: AbstractConnection, topology: Topology) -> None:
    """Declare every exchange, queue and binding of ``topology``; existing equal ones are kept.

    Raises:
        TopologyMismatch: an exchange or queue exists with other arguments; the error names
            it and every differing argument.
    """
    channel = await connection.channel(publisher_confirms=False)
    try:
        specs: tuple[Spec, ...] = (*topology.exchanges, *topology.queues)
        for spec in specs:
            await _declare_checked(connection, channel, spec)
        underlay = await channel.get_underlay_channel()
        for binding in topology.bindings:
            if binding.to_exchange:
                await underlay.exchange_bind(
                    destination=binding.destination,
                    source=binding.source,
                    routing_key=binding.routing_key,
                )
            else:
                await underlay.queue_bind(
                    binding.destination, binding.source, routing_key=binding.routing_key
                )
    finally:
        await _close_quietly(channel)


async def _close_quietly(channel: AbstractChannel) -> None:
    # A refusal closes the channel on the broker while a robust channel may be reopening
    # it: close either way, so no reopened channel is left behind.
    with contextlib.suppress(Exception):
        await channel.close()


def wanted_arguments(spec: Spec) -> dict[str, Any]:
    """What is compared on the broker: the x- arguments, durability and exchange type."""
    arguments: dict[str, Any] = {**spec.arguments, "durable": True}
    if isinstance(spec, ExchangeSpec):
        arguments["type"] = spec.type.value
    return arguments


async def _declare(channel: AbstractChannel, spec: Spec, wanted: dict[str, Any]) -> None:
    arguments = dict(wanted)
    durable = bool(arguments.pop("durable"))
    underlay = await channel.get_underlay_channel()
    if isinstance(spec, ExchangeSpec):
        kind = str(arguments.pop("type"))
        await underlay.exchange_declare(
            spec.name, exchange_type=kind, durable=durable, arguments=arguments
        )
    else:
        await underlay.queue_declare(spec.name, durable=durable, arguments=arguments)


async def _declare_checked(
    connection: AbstractConnection, channel: AbstractChannel, spec: Spec
) -> None:
    wanted = wanted_arguments(spec)
    try:
        await _declare(channel, spec, wanted)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        differences = await _probe_differences(connection, spec, wanted, str(exc))
        raise TopologyMismatch(spec.name, differences, detail=str(exc)) from None


async def _probe_differences(
    connection: AbstractConnection, spec: Spec, wanted: dict[str, Any], first_error: str
) -> dict[str, tuple[Any, Any]]:
    """Find every differing argument: the broker names one per refusal, so adopt the
    existing value and declare again until the declaration matches (each try on a fresh
    channel, because a refusal closes the channel)."""
    differences: dict[str, tuple[Any, Any]] = {}
    probe = dict(wanted)
    error = first_error
    for _ in range(_MAX_PROBES):
        parsed = parse_inequivalent(error)
        if parsed is None or parsed[0] in differences:
            break
        argument, existing = parsed
        differences[argument] = (wanted.get(argument), None if existing is _ABSENT else existing)
        if existing is _ABSENT:
            probe.pop(argument, None)
        else:
            probe[argument] = existing
        channel = await connection.channel(publisher_confirms=False)
        try:
            await _declare(channel, spec, probe)
            break
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            error = str(exc)
        finally:
            await _close_quietly(channel)
    return differences


def parse_inequivalent(message: str) -> tuple[str, Any] | None:
    """``(argument, existing value)`` from a PRECONDITION_FAILED text, or None if unknown."""
    match = _INEQUIVALENT.search(message)
    if match is None:
        return None
    value, kind, quoted = match.group("cv", "ct", "cq")
    if value is not None:
        is_number = kind != "longstr" and re.fullmatch(r"-?\d+", value) is not None
        return match["arg"], int(value) if is_number else value
    if quoted is not None:
        if re.fullmatch(r"-?\d+", quoted):
            return match["arg"], int(quoted)
        return match["arg"], {"true": True, "false": False}.get(quoted, quoted)
    return match["arg"], _ABSENT


async def delete_topology(connection: AbstractConnection, topology: Topology) -> None:
    """Delete every queue (with its messages) and exchange of ``topology``; missing ones
    are skipped.

    Queues go with ``if_unused=False, if_empty=False`` (quorum queues refuse
    ``if_unused=True`` with a connection-level error). Exchanges go one at a time:
    RabbitMQ 3.10 fails the connection when exchanges bound to each other are deleted
    concurrently.
    """
    objects = [(queue.name, True) for queue in topology.queues]
    objects += [(exchange.name, False) for exchange in topology.exchanges]
    channel = await connection.channel(publisher_confirms=False)
    try:
        for name, is_queue in objects:
            if channel.is_closed:
                channel = await connection.channel(publisher_confirms=False)
            underlay = await channel.get_underlay_channel()
            with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
                if is_queue:
                    await underlay.queue_delete(name, if_unused=False, if_empty=False)
                else:
                    await underlay.exchange_delete(name, if_unused=False)
    finally:
        await _close_quietly(channel)


def to_definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """Render a topology as a RabbitMQ definitions document (``rabbit/definitions.json``)."""
    return {
        "exchanges": [
            {
                "name": exchange.name,
                "vhost": vhost,
                "type": exchange.type.value,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": dict(exchange.arguments),
            }
            for exchange in topology.exchanges
        ],
        "queues": [
            {
                "name": queue.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(queue.arguments),
            }
            for queue in topology.queues
        ],
        "bindings": [
            {
                "source": binding.source,
                "vhost": vhost,
                "destination": binding.destination,
                "destination_type": "exchange" if binding.to_exchange else "queue",
                "routing_key": binding.routing_key,
                "arguments": {},
            }
            for binding in topology.bindings
        ],
    }
