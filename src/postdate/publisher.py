"""`Publisher`: send commands into the future through the delay ladder, with confirms."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractMessage,
    AbstractRobustConnection,
)

from postdate import ladder
from postdate.command import Command
from postdate.connection import connect
from postdate.declare import declare_topology
from postdate.envelope import Envelope
from postdate.errors import (
    DelayError,
    PostdateError,
    PublisherNotStarted,
    PublishInterrupted,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
)
from postdate.settings import Settings
from postdate.topology import Names, ladder_topology

When = timedelta | float | int | datetime
"""A delay (timedelta or seconds) or an aware due datetime."""

# send_many keeps at most this many publishes awaiting confirms at once.
PIPELINE_WINDOW = 5000


@dataclass(frozen=True)
class Route:
    """Where one publish goes: ``exchange`` ("" is the default exchange) and routing key(s)."""

    exchange: str
    routing_key: str
    cc: tuple[str, ...] = ()


def route(names: Names, queue: str, seconds: int) -> Route:
    """Route a delay of ``seconds`` to ``queue``.

    Zero goes to the deliver exchange at once. Otherwise the message enters the ladder
    queue of its highest set bit by the default exchange (no topic exchange on the publish
    path), carrying the ladder key in CC: dead-lettering routes on the CC keys too, so
    each hop's exchange finds the next level from it.
    """
    key = ladder.routing_key(seconds, queue)
    if seconds == 0:
        return Route(names.deliver, key)
    return Route("", names.delay_queue(seconds.bit_length() - 1), (key,))


def due_time(now: datetime, delay: When | None = None, at: datetime | None = None) -> datetime:
    """The exact due time of a send, from ``delay`` or ``at`` (not both).

    Raises:
        DelayError: both or a negative delay given, ``at`` is naive.
    """
    if delay is not None and at is not None:
        raise DelayError("give either delay= or at=, not both")
    if isinstance(delay, datetime):
        delay, at = None, delay
    if at is not None:
        if at.tzinfo is None or at.utcoffset() is None:
            raise DelayError(f"at={at.isoformat()} is naive: give it a timezone, e.g. UTC")
        return at
    if delay is None:
        return now
    span = delay if isinstance(delay, timedelta) else timedelta(seconds=delay)
    if span < timedelta(0):
        raise DelayError(f"delay {span} is negative; for 'at once' give delay=0")
    return now + span


class Publisher:
    """Publishes commands with broker confirms, mandatory routing and persistence.

    Use as an async context manager::

        async with Publisher.from_settings() as pub:
            await pub.send(ExpireReservation(order_id=oid), delay=timedelta(days=7))
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
        self._channel: AbstractChannel | None = None
        self._busy_ids: dict[str, asyncio.Event] = {}

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: object) -> Publisher:
        """A publisher configured from the environment (``RABBITMQ_URL``, ``POSTDATE_*``).

        Raises:
            ConfigError: the environment holds an invalid setting.
        """
        return cls(settings=settings or Settings.load(), **kwargs)  # type: ignore[arg-type]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect (with retries) and, unless ``declare=False``, declare the ladder.

        Raises:
            BrokerUnavailable: the broker cannot be reached.
            TopologyMismatch: a ladder object exists with other arguments.
        """
        self._connection = await connect(
            self.url,
            name=self._connection_name,
            attempts=self.settings.connect_attempts,
            attempt_timeout=self.settings.connect_timeout,
        )
        try:
            if self._declare:
                await declare_topology(self._connection, ladder_topology(self.settings.prefix))
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection; later sends raise :class:`PublisherNotStarted`."""
        self._channel = None
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
            DelayError: negative or too long a delay, naive ``at``, both given.
            PublishReturned: the broker had nowhere to route the message.
            PublishNacked: the broker refused the message.
            PublishTimeout: no confirm within the publish timeout.
        """
        envelope, target = self.prepare(
            command, delay, at=at, message_id=message_id, correlation_id=correlation_id
        )
        await self._publish(envelope, target)
        return envelope.message_id

    async def send_many(
        self, items: Iterable[tuple[Command, When]], *, correlation_id: str | None = None
    ) -> list[str]:
        """Schedule many commands, pipelining confirms; returns their message ids in order.

        Every item is validated before anything is published. Returns once every publish
        is confirmed.

        Raises:
            DelayError: an item's delay cannot be scheduled (nothing published then).
            PublishError: at least one publish failed (the others may have gone out).
        """
        prepared = [
            self.prepare(command, when, correlation_id=correlation_id) for command, when in items
        ]
        await self.publish_prepared(prepared)
        return [envelope.message_id for envelope, _ in prepared]

    async def publish_prepared(self, prepared: Sequence[tuple[Envelope, Route]]) -> None:
        """Publish prepared envelopes with pipelined confirms; wait for all, then raise
        the first failure (see :meth:`publish_each` for every item's result)."""
        for failure in await self.publish_each(prepared):
            if failure is not None:
                raise failure

    async def publish_each(
        self, prepared: Sequence[tuple[Envelope, Route]]
    ) -> list[PostdateError | None]:
        """Publish prepared envelopes with pipelined confirms, a window of
        ``PIPELINE_WINDOW`` at a time (each within the publish timeout); returns, per item
        and in order, None when the broker confirmed it or the typed error otherwise.

        Raises:
            PublisherNotStarted: not started, or closed.
        """
        outcomes: list[PostdateError | None] = []
        for start in range(0, len(prepared), PIPELINE_WINDOW):
            window = prepared[start : start + PIPELINE_WINDOW]
            for _, target in window:
                self._check_route(target)
            ids = {envelope.message_id for envelope, _ in window}
            if len(ids) < len(window) or not ids.isdisjoint(self._busy_ids):
                # aiormq matches a returned message to its publish by message_id: two
                # in flight with one id could swap a return for a confirm.
                outcomes.extend([await self._settled(self._publish(e, t)) for e, t in window])
                continue
            outcomes.extend(await self._publish_window(window, ids))
        return outcomes

    async def _publish_window(
        self, window: Sequence[tuple[Envelope, Route]], ids: set[str]
    ) -> list[PostdateError | None]:
        self._busy_ids.update(dict.fromkeys(ids, asyncio.Event()))
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                channel = await self._underlay()
                results = await asyncio.gather(
                    *(
                        channel.basic_publish(
                            envelope.body,
                            exchange=target.exchange,
                            routing_key=target.routing_key,
                            properties=envelope.properties(target.cc),
                            mandatory=True,
                        )
                        for envelope, target in window
                    ),
                    return_exceptions=True,
                )
        except TimeoutError:
            timeout = PublishTimeout(
                f"{len(window)} publishes not all confirmed "
                f"within {self.settings.publish_timeout} s"
            )
            return [timeout] * len(window)
        finally:
            self._release(ids)
        return [
            None
            if not isinstance(result, BaseException)
            else _typed(_translate(result, envelope.message_id, target))
            for (envelope, target), result in zip(window, results, strict=True)
        ]

    @staticmethod
    async def _settled(publish: Awaitable[None]) -> PostdateError | None:
        try:
            await publish
        except PostdateError as error:
            return error
        return None

    def prepare(
        self,
        command: Command,
        delay: When | None = None,
        *,
        at: datetime | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        now: datetime | None = None,
    ) -> tuple[Envelope, Route]:
        """Compute the envelope and route of one send without publishing it.

        Raises:
            DelayError: the delay cannot be scheduled.
        """
        now = now or datetime.now(UTC)
        due = due_time(now, delay, at)
        seconds = ladder.ladder_seconds(due, now)
        envelope = Envelope.for_command(
            command, due, message_id=message_id, correlation_id=correlation_id
        )
        return envelope, route(self.names, command.queue, seconds)

    async def publish_envelope(self, envelope: Envelope) -> None:
        """Publish an already-built envelope towards its queue at its due time, confirmed."""
        seconds = ladder.ladder_seconds(envelope.due_at, datetime.now(UTC))
        await self._publish(envelope, route(self.names, envelope.queue, seconds))

    async def _publish(self, envelope: Envelope, target: Route) -> None:
        # Properties straight from the envelope: building an aio_pika.Message first
        # costs about as much again as everything else postdate does per message.
        await self._basic_publish(envelope.body, envelope.properties(target.cc), target)

    async def publish_message(self, message: AbstractMessage, target: Route) -> None:
        """Publish one AMQP message (mandatory, confirmed) along ``target``.

        Raises:
            PublishReturned, PublishNacked, PublishTimeout: as for :meth:`send`.
        """
        await self._basic_publish(message.body, message.properties, target)

    async def _basic_publish(
        self, body: bytes, properties: aiormq.spec.Basic.Properties, target: Route
    ) -> None:
        self._check_route(target)
        message_id = properties.message_id or ""
        while message_id in self._busy_ids:  # one publish per message id in flight
            await self._busy_ids[message_id].wait()
        self._busy_ids[message_id] = asyncio.Event()
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                channel = await self._underlay()
                await channel.basic_publish(
                    body,
                    exchange=target.exchange,
                    routing_key=target.routing_key,
                    properties=properties,
                    mandatory=True,
                )
        except TimeoutError as exc:
            raise PublishTimeout(
                f"no confirm for message {properties.message_id} "
                f"within {self.settings.publish_timeout} s"
            ) from exc
        except Exception as exc:
            raise _translate(exc, properties.message_id, target) from None
        finally:
            self._release((message_id,))

    def _release(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            released = self._busy_ids.pop(message_id, None)
            if released is not None:
                released.set()

    async def _underlay(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None:
            raise PublisherNotStarted("Publisher is not started: use `async with Publisher(...)`")
        return await self._channel.get_underlay_channel()

    def _check_route(self, target: Route) -> None:
        if target.exchange not in ("", self.names.deliver):
            raise ValueError(f"publisher routes by {self.names.deliver!r} or by queue name only")

    async def publish_to_queue(self, message: AbstractMessage, queue: str) -> None:
        """Publish ``message`` straight into ``queue`` by the default exchange, confirmed."""
        await self.publish_message(message, Route("", queue))


def _typed(error: BaseException) -> PostdateError:
    """Errors of a pipelined publish as PostdateErrors, so callers get one kind per item."""
    if isinstance(error, PostdateError):
        return error
    if not isinstance(error, Exception):
        raise error  # CancelledError and friends are not a publish result
    return PublishInterrupted(f"publish failed: {error!r}")


def _translate(error: BaseException, message_id: str | None, target: Route) -> BaseException:
    """The typed error for a failed publish (other errors pass through unchanged)."""
    if isinstance(error, aiormq.exceptions.PublishError):
        reply = getattr(error.frame, "reply_text", "returned")
        return PublishReturned(target.exchange, target.routing_key, str(reply))
    if isinstance(error, aiormq.exceptions.DeliveryError):
        return PublishNacked(
            f"broker refused message {message_id} for {target.routing_key!r}: {error}"
        )
    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
        return PublishReturned(target.exchange, target.routing_key, str(error))
    lost = (
        aiormq.exceptions.AMQPError,
        aiormq.exceptions.ChannelInvalidStateError,
        ConnectionError,
    )
    if isinstance(error, lost):
        return PublishInterrupted(
            f"publish of message {message_id} to {target.routing_key!r} was interrupted "
            f"(connection or channel lost; it may or may not have arrived): {error!r}"
        )
    return error


__all__ = ["Publisher", "Route", "When", "due_time", "route"]
