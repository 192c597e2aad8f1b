"""Apply topology values to a broker, idempotently, with typed errors for mismatches; or
render them as a RabbitMQ definitions file."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from postdate._errors import TopologyMismatch
from postdate.broker._connection import close_quietly
from postdate.broker._mismatch import Spec, declare_spec, probe_differences
from postdate.broker._topology import ExchangeSpec, Topology


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
        await close_quietly(channel)


def wanted_arguments(spec: Spec) -> dict[str, Any]:
    """What is compared on the broker: the x- arguments, durability and exchange type."""
    arguments: dict[str, Any] = {**spec.arguments, "durable": True}
    if isinstance(spec, ExchangeSpec):
        arguments["type"] = spec.type.value
    return arguments


async def _declare_checked(
    connection: AbstractConnection, channel: AbstractChannel, spec: Spec
) -> None:
    wanted = wanted_arguments(spec)
    try:
        await declare_spec(channel, spec, wanted)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        differences = await probe_differences(connection, spec, wanted, str(exc))
        raise TopologyMismatch(spec.name, differences, detail=str(exc)) from None


@dataclass(frozen=True)
class Deleted:
    """What :func:`delete_topology` removed: queues, exchanges and the messages the queues
    held (as the broker counted them when it deleted each queue)."""

    queues: int = 0
    exchanges: int = 0
    messages: int = 0


@dataclass(frozen=True)
class QueueState:
    """A queue's message and consumer counts as a passive declaration reports them."""

    messages: int
    consumers: int


async def delete_topology(connection: AbstractConnection, topology: Topology) -> Deleted:
    """Delete every queue (with its messages) and exchange of ``topology``; missing ones
    are skipped.

    Queues go with ``if_unused=False, if_empty=False`` (quorum queues refuse
    ``if_unused=True`` with a connection-level error). Exchanges go one at a time:
    RabbitMQ 3.10 fails the connection when exchanges bound to each other are deleted
    concurrently.

    Returns:
        The counts deleted. RabbitMQ answers a deletion of a missing queue or exchange
        like any other, so these count missing ones too: pass only existing ones (see
        :func:`queue_states` and :func:`existing_exchanges`) for exact counts.
    """
    objects = [(queue.name, True) for queue in topology.queues]
    objects += [(exchange.name, False) for exchange in topology.exchanges]
    queues = exchanges = messages = 0
    channel = await connection.channel(publisher_confirms=False)
    try:
        for name, is_queue in objects:
            if channel.is_closed:
                channel = await connection.channel(publisher_confirms=False)
            underlay = await channel.get_underlay_channel()
            with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
                if is_queue:
                    result = await underlay.queue_delete(name, if_unused=False, if_empty=False)
                    queues, messages = queues + 1, messages + (result.message_count or 0)
                else:
                    await underlay.exchange_delete(name, if_unused=False)
                    exchanges += 1
    finally:
        await close_quietly(channel)
    return Deleted(queues, exchanges, messages)


async def queue_states(
    connection: AbstractConnection, names: Iterable[str]
) -> dict[str, QueueState | None]:
    """Message and consumer counts of each queue in ``names``; ``None`` for a missing one.

    ``messages`` counts ready messages: deliveries a consumer holds unacked are not in it.
    """
    return {name: await _queue_state(connection, name) for name in names}


async def existing_exchanges(connection: AbstractConnection, names: Iterable[str]) -> list[str]:
    """The exchanges of ``names`` that exist on the broker, in the order given."""
    return [name for name in names if await exchange_exists(connection, name)]


@contextlib.asynccontextmanager
async def _own_channel(connection: AbstractConnection) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A channel for one passive declaration: NOT_FOUND closes the channel it happens on."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        yield await channel.get_underlay_channel()
    finally:
        await close_quietly(channel)


async def _queue_state(connection: AbstractConnection, name: str) -> QueueState | None:
    async with _own_channel(connection) as channel:
        try:
            result = await channel.queue_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
    return QueueState(result.message_count or 0, result.consumer_count or 0)


async def exchange_exists(connection: AbstractConnection, name: str) -> bool:
    """Whether exchange ``name`` exists (a passive declare on a channel of its own)."""
    async with _own_channel(connection) as channel:
        try:
            await channel.exchange_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    return True


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


_ENTRY_KINDS = ("exchanges", "queues", "bindings")


def merge_definitions(existing: object, topology: Mapping[str, Any]) -> dict[str, Any]:
    """A definitions document (e.g. ``rabbit/definitions.json``) with the exchanges, queues
    and bindings of ``topology`` (from :func:`to_definitions`) merged in.

    An entry of ``topology`` replaces the entry of ``existing`` with the same identity, in
    place (queues and exchanges: vhost and name; bindings: every field, arguments
    included); the other entries of ``topology`` are appended. Everything else in
    ``existing`` (users, vhosts, permissions, policies, parameters, other queues,
    exchanges and bindings) is kept as it is. Neither argument is changed.

    Args:
        existing: the parsed document to merge into.
        topology: the topology's definitions.

    Returns:
        The merged document.

    Raises:
        ValueError: ``existing`` is not a JSON object, or its exchanges, queues or
            bindings are not arrays of objects.
    """
    if not isinstance(existing, Mapping):
        raise ValueError(f"holds a JSON {_json_kind(existing)}, not a definitions object")
    merged = dict(existing)
    for kind in _ENTRY_KINDS:
        merged[kind] = _merge_entries(kind, existing.get(kind, []), topology.get(kind, []))
    return merged


def _merge_entries(kind: str, existing: object, entries: Iterable[Any]) -> list[Any]:
    if not isinstance(existing, list) or not all(isinstance(e, Mapping) for e in existing):
        raise ValueError(f"its {kind!r} is not an array of objects")
    identity = _binding_identity if kind == "bindings" else _named_identity
    replacements = {identity(entry): dict(entry) for entry in entries}
    merged: list[Any] = []
    placed: set[tuple[str, ...]] = set()
    for entry in existing:
        key = identity(entry)
        if key not in replacements:
            merged.append(entry)
        elif key not in placed:  # a duplicate of a replaced entry is dropped
            merged.append(replacements[key])
            placed.add(key)
    merged.extend(entry for key, entry in replacements.items() if key not in placed)
    return merged


def _named_identity(entry: Mapping[str, Any]) -> tuple[str, ...]:
    return str(entry.get("vhost", "/")), str(entry.get("name"))


def _binding_identity(entry: Mapping[str, Any]) -> tuple[str, ...]:
    fields = ("source", "destination", "destination_type", "routing_key")
    return (
        str(entry.get("vhost", "/")),
        *(str(entry.get(field)) for field in fields),
        json.dumps(entry.get("arguments") or {}, sort_keys=True),
    )


def _json_kind(value: object) -> str:
    kinds = ((list, "array"), (str, "string"), (bool, "boolean"), ((int, float), "number"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "null")


async def queue_exists(connection: AbstractConnection, queue: str) -> bool:
    """Whether ``queue`` exists on the broker (a passive declare on a channel of its own)."""
    return await _queue_state(connection, queue) is not None
