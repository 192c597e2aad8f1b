"""How delayed commands travel: the delay ladder or the delayed-message plugin.

A :class:`Backend` is what a :class:`~postdate.Publisher` asks where each delayed publish
goes, what to declare at start, and what to make sure of before a first send to a queue.
``POSTDATE_BACKEND`` picks it (:class:`~postdate._settings.BackendName`): ``ladder`` (the
default), ``plugin``, or ``auto``, which asks the broker whether it has the plugin
(:func:`probe_plugin`) and decides with :func:`decide`. Everything that publishes a
delayed command goes through the publisher, so through its backend: sends, the outbox
relay, a worker's follow-ups and its retries beyond the tiers. The consumer side is the
same for both: each delivers onto the command queue, and the worker holds until due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

from postdate._errors import PublishReturned
from postdate._settings import BackendName, Settings
from postdate.broker._declare import declare_topology
from postdate.broker._topology import ExchangeType, Names, Topology
from postdate.delay import _plugin as plugin
from postdate.delay import _routing as scheduling
from postdate.delay._routing import Route
from postdate.observe._logs import get_logger
from postdate.publish._envelope import Envelope

log = get_logger(__name__)


class Backend(Protocol):
    """Where delayed publishes go, and what they need on the broker."""

    @property
    def name(self) -> BackendName:
        """``ladder`` or ``plugin``."""

    def topology(self, prefix: str) -> Topology:
        """What a publisher declares at start, even with ``declare=False`` (beyond the
        ladder, which a worker or a declaring publisher declares for both backends)."""

    def route(self, names: Names, envelope: Envelope, now: datetime) -> Route:
        """Where ``envelope`` is published at ``now`` to reach its queue when due.

        Raises:
            DelayError: the due time is beyond this backend's reach.
        """

    def check(self, envelopes: Sequence[Envelope], now: datetime) -> None:
        """Refuse, before anything is published, a due time beyond this backend's reach
        (beyond what :func:`~postdate.delay._routing.due_time` checked already).

        Raises:
            DelayError: the first envelope whose due time is out of reach.
        """

    async def prepare(self, connection: AbstractConnection, prefix: str, queues: set[str]) -> None:
        """Make sure delayed publishes can reach ``queues`` (which exist).

        Raises:
            PublishReturned: a queue cannot be made reachable (it is missing).
        """


@dataclass(frozen=True)
class LadderBackend:
    """TTL + dead-letter quorum queues (:mod:`postdate.delay._ladder`): replicated, no plugin."""

    name: BackendName = BackendName.LADDER

    def topology(self, prefix: str) -> Topology:
        """Nothing of its own: the ladder is declared with ``declare=True`` (or by a worker)."""
        return Topology()

    def route(self, names: Names, envelope: Envelope, now: datetime) -> Route:
        """:func:`postdate.delay._routing.plan`.

        Raises:
            DelayError: the due time is beyond the ladder's reach.
        """
        return scheduling.plan(names, envelope, now)

    def check(self, envelopes: Sequence[Envelope], now: datetime) -> None:
        """Nothing: :func:`~postdate.delay._routing.due_time` refused what the ladder
        can't reach."""

    async def prepare(self, connection: AbstractConnection, prefix: str, queues: set[str]) -> None:
        """Nothing: a command queue's binding on ``P.deliver`` comes with the queue."""


@dataclass(frozen=True)
class PluginBackend:
    """The delayed-message plugin's exchange (:mod:`postdate.delay._plugin`)."""

    name: BackendName = BackendName.PLUGIN

    def topology(self, prefix: str) -> Topology:
        """``P.delayed`` (its bindings come per queue, see :meth:`prepare`)."""
        return plugin.plugin_topology(prefix)

    def route(self, names: Names, envelope: Envelope, now: datetime) -> Route:
        """:func:`postdate.delay._plugin.route`.

        Raises:
            DelayError: the delay is above the plugin's 2^32-1 ms.
        """
        return plugin.route(names, envelope, now)

    def check(self, envelopes: Sequence[Envelope], now: datetime) -> None:
        """Refuse a delay above the plugin's 2^32-1 ms.

        Raises:
            DelayError: see :func:`postdate.delay._plugin.delay_ms`.
        """
        for envelope in envelopes:
            plugin.delay_ms(envelope, now)

    async def prepare(self, connection: AbstractConnection, prefix: str, queues: set[str]) -> None:
        """Bind ``queues`` on ``P.delayed``: the plugin drops what it cannot route.

        Raises:
            PublishReturned: a queue does not exist (nothing could be bound for it).
        """
        listed = tuple(sorted(queues))
        try:
            await declare_topology(connection, plugin.plugin_topology(prefix, listed))
        except aiormq.exceptions.ChannelNotFoundEntity as missing:
            why = f"cannot bind {list(listed)}, nothing published: {missing}"
            raise PublishReturned(Names(prefix).delayed, "", why) from None


LADDER = LadderBackend()
PLUGIN = PluginBackend()


@dataclass(frozen=True)
class Choice:
    """The backend chosen, and why (logged once at start)."""

    backend: Backend
    reason: str


def decide(setting: BackendName, answer: BaseException | None = None) -> Choice:
    """The backend for ``setting``; for ``auto``, from the broker's ``answer`` to a
    declaration of an ``x-delayed-message`` exchange (None: it was declared).

    Only a declaration that succeeded picks the plugin: a refusal of the type
    (``COMMAND_INVALID - unknown exchange type``) or any other failure (no permission,
    a timeout) picks the ladder, which needs no plugin, and says why.
    """
    if setting is BackendName.LADDER:
        return Choice(LADDER, "POSTDATE_BACKEND=ladder")
    if setting is BackendName.PLUGIN:
        return Choice(PLUGIN, "POSTDATE_BACKEND=plugin")
    if answer is None:
        return Choice(PLUGIN, "auto: the broker has the delayed-message plugin")
    if isinstance(answer, aiormq.exceptions.ConnectionCommandInvalid):
        return Choice(LADDER, "auto: the broker has no delayed-message plugin")
    return Choice(LADDER, f"auto: could not tell whether the broker has the plugin ({answer!r})")


def probe_name(prefix: str) -> str:
    """The throwaway exchange :func:`probe_plugin` declares (and deletes) under ``prefix``."""
    return f"{Names(prefix).delayed}.probe"


async def probe_plugin(settings: Settings) -> BaseException | None:
    """Declare, then delete, a transient ``x-delayed-message`` exchange on a connection of
    its own; returns None if the broker took it, else what it answered.

    A broker without the plugin answers ``COMMAND_INVALID``, which closes the whole
    connection, hence one of its own: no other channel is touched. Nothing is left
    behind: the exchange is deleted at once (and, transient, would not survive a restart).
    Never raises for the broker's answer; a cancellation propagates.
    """
    quiet = _QuietRefusal()
    aiormq_log = logging.getLogger("aiormq.connection")
    aiormq_log.addFilter(quiet)
    try:
        async with asyncio.timeout(settings.connect_timeout):
            await _declare_and_delete(settings.url, probe_name(settings.prefix))
    except Exception as answer:
        return answer
    finally:
        aiormq_log.removeFilter(quiet)
    return None


async def _declare_and_delete(url: str, name: str) -> None:
    connection = await aio_pika.connect(
        url, client_properties={"connection_name": "postdate-backend-probe"}
    )
    try:
        channel = await connection.channel(publisher_confirms=False)
        underlay = await channel.get_underlay_channel()
        await underlay.exchange_declare(
            name,
            exchange_type=ExchangeType.DELAYED.value,
            durable=False,
            arguments={"x-delayed-type": plugin.DELAYED_TYPE.value},
        )
        await underlay.exchange_delete(name)
    finally:
        with contextlib.suppress(Exception):  # the broker may have closed it already
            await connection.close()


class _QuietRefusal(logging.Filter):
    """Drops aiormq's error lines about the probe's refused declaration: expected there."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return _REFUSAL not in record.getMessage() + repr(error)


_REFUSAL = f"unknown exchange type '{ExchangeType.DELAYED.value}'"


async def choose(settings: Settings) -> Choice:
    """The backend ``settings`` ask for (probing the broker for ``auto``); logged, once per
    start, unless it is the default (the ladder, asked for)."""
    answer = await probe_plugin(settings) if settings.backend is BackendName.AUTO else None
    choice = decide(settings.backend, answer)
    if settings.backend is not BackendName.LADDER:
        log.info("publisher.backend", backend=choice.backend.name.value, reason=choice.reason)
    return choice
