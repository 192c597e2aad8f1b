"""`Publisher`: send commands into the future, with confirms.

Every delayed publish is routed by the publisher's backend (:mod:`postdate.delay._backend`: the
delay ladder, planned by :mod:`postdate.delay._routing`, or the delayed-message plugin) and
goes out through the one confirmed-publish path,
:class:`postdate.publish._confirm.ConfirmedChannel`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from postdate._command import Command
from postdate._errors import DelayError, PostdateError, PublisherNotStarted
from postdate._settings import Settings
from postdate.broker._connection import connect
from postdate.broker._declare import declare_topology
from postdate.broker._topology import Names, Topology, ladder_topology
from postdate.delay import _routing as scheduling
from postdate.delay._backend import LADDER, Backend, choose
from postdate.delay._routing import When
from postdate.publish._confirm import PIPELINE_WINDOW, ConfirmedChannel, Outgoing, Plan, raise_first
from postdate.publish._envelope import Envelope
from postdate.publish._queues import QueueCheck

Properties = aiormq.spec.Basic.Properties


class Publisher:
    """Publishes commands with broker confirms, mandatory routing and persistence.

    Use as an async context manager::

        async with Publisher.from_settings() as pub:
            await pub.send(ExpireReservation(order_id=oid), delay=timedelta(days=7))

    ``declare=False`` skips declaring the ladder at start (a worker declares it with the
    rest of its topology).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        declare: bool = True,
        connection_name: str | None = None,
    ) -> None:
        self.settings = settings or Settings.load()
        self.url = url or self.settings.url
        self.names = Names(self.settings.prefix)
        self._declare = declare
        self._connection_name = connection_name or f"postdate-publisher-{os.getpid()}"
        self._connection: AbstractRobustConnection | None = None
        self._confirms: ConfirmedChannel | None = None
        self._queues = QueueCheck(self.settings)
        # How delayed commands travel (POSTDATE_BACKEND); chosen at start.
        self.backend: Backend = LADDER

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: object) -> Publisher:
        """A publisher configured from the environment (``RABBITMQ_URL``, ``POSTDATE_*``).

        Raises:
            ConfigError: the environment holds an invalid setting.
        """
        return cls(settings=settings or Settings.load(), **kwargs)  # type: ignore[arg-type]

    async def __aenter__(self) -> Self:
        """Start; see :meth:`start`."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close; see :meth:`close`."""
        await self.close()

    async def start(self) -> None:
        """Connect (with retries), choose the backend (``POSTDATE_BACKEND``; ``auto`` asks
        the broker), declare what it needs and, unless ``declare=False``, the ladder.

        Raises:
            BrokerUnavailable: the broker cannot be reached.
            TopologyMismatch: a ladder or backend object exists with other arguments.
        """
        self._connection = await connect(
            self.url,
            name=self._connection_name,
            attempts=self.settings.connect_attempts,
            attempt_timeout=self.settings.connect_timeout,
        )
        try:
            self.backend = (await choose(self.settings)).backend
            topology = self.backend.topology(self.settings.prefix)
            if self._declare:
                topology = ladder_topology(self.settings.prefix) + topology
            if topology != Topology():
                await declare_topology(self._connection, topology)
            connection = self._connection

            async def new_channel() -> AbstractRobustChannel:
                return await connection.channel(publisher_confirms=True, on_return_raises=True)

            channel = await new_channel()
            self._confirms = ConfirmedChannel(channel, self.settings.publish_timeout, new_channel)
        except BaseException:
            await self.close()
            raise

    @property
    def declared_queues(self) -> list[str]:
        """Command queues this publisher had to declare: no worker had declared them."""
        return self._queues.declared

    @property
    def channel_renewals(self) -> int:
        """How often publishing moved to a new channel after the broker nacked a publish."""
        return 0 if self._confirms is None else self._confirms.renewals

    async def close(self) -> None:
        """Close the connection; later sends raise :class:`PublisherNotStarted`."""
        self._confirms = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def send(
        self,
        command: Command,
        delay: When | None = None,
        *,
        at: datetime | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Schedule ``command`` after ``delay`` (or at ``at``); returns its message id.

        Returns only once the broker confirmed the publish. Delay zero or a past ``at``
        delivers at once. ``message_id`` may carry an idempotency key.

        Raises:
            DelayError: negative, too long or not a number a delay, naive ``at``, both.
            InvalidArgument: ``command`` is not an instance of a Command subclass.
            PublishReturned: the broker had nowhere to route the message.
            PublishNacked: the broker refused the message.
            PublishTimeout: no confirm within the publish timeout; the command may have
                arrived: send again with the same ``message_id`` (a duplicate at worst).
            PublisherNotStarted: not started, or closed.
        """
        now = datetime.now(UTC)
        envelope = Envelope.for_command(
            command,
            scheduling.due_time(now, delay, at),
            message_id=message_id,
            correlation_id=correlation_id,
            made_at=now,
        )
        raise_first(await self.publish_each([envelope]))
        return envelope.message_id

    async def send_many(
        self, items: Iterable[tuple[Command, When]], *, correlation_id: str | None = None
    ) -> list[str]:
        """Schedule many commands, pipelining confirms; returns their message ids in order.

        Every item is validated (for the plugin backend too) before anything is published.
        Returns once every publish is confirmed.

        Raises:
            DelayError: an item's delay cannot be scheduled (nothing published then).
            InvalidArgument: an item is not a Command (nothing published then).
            PublishError: at least one publish failed (the others may have gone out).
            PublisherNotStarted: not started, or closed.
        """
        now = datetime.now(UTC)
        envelopes = [
            Envelope.for_command(
                command, scheduling.due_time(now, when), correlation_id=correlation_id, made_at=now
            )
            for command, when in items
        ]
        self.backend.check(envelopes, now)  # its own limit (the plugin's is shorter)
        raise_first(await self.publish_each(envelopes))
        return [envelope.message_id for envelope in envelopes]

    async def publish_each(
        self, envelopes: Sequence[Envelope], *, declare_queues: bool = True
    ) -> list[PostdateError | None]:
        """Publish envelopes towards their queues at their due times, pipelining confirms.

        The delay of each (through the publisher's backend) is the time left until its
        exact due time at the moment it is written to the broker (after any wait for a
        reconnect or a resource alarm).
        Returns, per envelope and in order, None when the broker confirmed it, or the
        typed error (:class:`DelayError` for a due time beyond the ladder's reach, a
        :class:`PublishError` otherwise; a :class:`PublishTimeout` may have arrived).

        The first publish to a queue makes sure the queue exists
        (:mod:`postdate.publish._queues`): a command queue no worker has declared yet (the
        first deploy) is declared, with its poison queue, as its worker declares it, and a
        warning is logged. The plugin backend then binds it on its exchange (the plugin
        cannot honour ``mandatory``). With ``declare_queues=False`` (a worker's paths: the
        queue is named by a message, not by the application) nothing is declared: a
        command for a missing queue goes to the catch-all queue through the ladder's
        deliver exchange.

        Raises:
            PublisherNotStarted: not started, or closed.
            PublishTimeout: the first publish to a queue could not check it exists within
                the publish timeout (nothing was published).
            PublishReturned: the plugin backend could not bind a queue that does not exist
                (no ladder declared either; nothing was published).
            TopologyMismatch: see :func:`~postdate.broker._declare.declare_topology`.
        """
        queues = {envelope.queue for envelope in envelopes}
        if self._queues.needed(queues):
            await self._queues.ensure(self._connection, self.backend, queues, declare_queues)
        return await self._confirmed([self._plan(envelope) for envelope in envelopes])

    async def republish(self, body: bytes, properties: Properties, queue: str) -> None:
        """Publish a copy of a delivery straight into ``queue``, confirmed (retry, poison
        and replayed copies).

        Raises:
            PublishReturned, PublishNacked, PublishTimeout: the publish was not confirmed
                (see :meth:`send`).
            PublisherNotStarted: not started, or closed.
        """
        raise_first(await self.republish_each([(body, properties, queue)]))

    async def republish_each(
        self, copies: Sequence[tuple[bytes, Properties, str]]
    ) -> list[PostdateError | None]:
        """Publish ``(body, properties, queue)`` copies straight into their queues,
        pipelining confirms; returns, in order, None per confirmed copy or its error.

        Raises:
            PublisherNotStarted: not started, or closed.
        """
        outgoing = [
            Outgoing(body, properties, scheduling.to_queue(queue))
            for body, properties, queue in copies
        ]
        return await self._confirmed([_fixed(copy) for copy in outgoing])

    def _plan(self, envelope: Envelope) -> Plan:
        def planned(now: datetime) -> Outgoing | PostdateError:
            try:
                target = self.backend.route(self.names, envelope, now)
            except DelayError as beyond:
                return beyond
            properties = envelope.properties(target.cc, target.delay_ms)
            return Outgoing(envelope.body, properties, target)

        return planned

    async def _confirmed(self, plans: Sequence[Plan]) -> list[PostdateError | None]:
        if self._confirms is None:
            raise PublisherNotStarted("Publisher is not started: use `async with Publisher(...)`")
        return await self._confirms.publish(plans)


def _fixed(outgoing: Outgoing) -> Plan:
    return lambda _: outgoing


__all__ = ["PIPELINE_WINDOW", "Publisher"]
