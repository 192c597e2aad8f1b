"""Declaring one exchange or queue, and, when the broker refuses it, finding out why.

RabbitMQ refuses a declaration whose arguments differ from the existing object's with
PRECONDITION_FAILED, naming one differing argument per refusal (and closing the
channel): :func:`probe_differences` adopts each existing value in turn and declares again
until the declaration matches, so a mismatch can name every difference at once.
"""

from __future__ import annotations

import re
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from postdate.broker._connection import close_quietly
from postdate.broker._topology import ExchangeSpec, QueueSpec

# "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value '2000'
#  of type 'signedint' but current is none" ('durable' and 'type' come as quoted words)
_VALUE = r"none|the value '(?P<{0}v>.*?)' of type '(?P<{0}t>\w+)'|'(?P<{0}q>.*?)'"
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for \w+ '.*?' in vhost '.*?': "
    r"received (?:" + _VALUE.format("r") + r") but current is (?:" + _VALUE.format("c") + r")",
)
_MAX_PROBES = 16
# An argument the existing object does not have ("but current is none").
_ABSENT = object()

Spec = QueueSpec | ExchangeSpec


async def declare_spec(channel: AbstractChannel, spec: Spec, wanted: dict[str, Any]) -> None:
    """Declare ``spec`` on ``channel`` with ``wanted`` (its arguments, ``durable`` and, for
    an exchange, ``type``: see :func:`~postdate.broker._declare.wanted_arguments`).

    Raises:
        aiormq.exceptions.ChannelPreconditionFailed: it exists with other arguments (the
            broker closes the channel).
    """
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


async def probe_differences(
    connection: AbstractConnection, spec: Spec, wanted: dict[str, Any], first_error: str
) -> dict[str, tuple[Any, Any]]:
    """Find every differing argument: the broker names one per refusal, so adopt the
    existing value and declare again until the declaration matches (each try on a fresh
    channel, because a refusal closes the channel).

    Returns:
        ``{argument: (wanted value, existing value)}``, None for a value not set; empty
        when ``first_error`` names no argument this can read.
    """
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
            await declare_spec(channel, spec, probe)
            break
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            error = str(exc)
        finally:
            await close_quietly(channel)
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
