"""`Publisher`: send commands into the future through the delay ladder, with confirms.

Every publish goes through one private path, :meth:`Publisher._confirmed`: a window of
publishes awaiting confirms together (a single send is a window of one), one timeout per
window, one in-flight message id bookkeeping, one translation of broker errors.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from postdate import scheduling
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
from postdate.scheduling import Route, When
from postdate.settings import Settings
from postdate.topology import Names, ladder_topology

# At most this many publishes await confirms at once.
PIPELINE_WINDOW = 5000

Properties = aiormq.spec.Basic.Properties
_Outgoing = tuple[bytes, Properties, Route]


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
            PublishInterrupted: the connection was lost before the confirm.
            PublisherNotStarted: not started, or closed.
        """
        now = datetime.now(UTC)
        due = scheduling.due_time(now, delay, at)
        envelope = Envelope.for_command(
            command, due, message_id=message_id, correlation_id=correlation_id
        )
        _raise_first(await self.publish_each([envelope], now=now))
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
            PublisherNotStarted: not started, or closed.
        """
        now = datetime.now(UTC)
        envelopes = [
            Envelope.for_command(
                command, scheduling.due_time(now, when), correlation_id=correlation_id
            )
            for command, when in items
        ]
        _raise_first(await self.publish_each(envelopes, now=now))
        return [envelope.message_id for envelope in envelopes]

    async def publish_each(
        self, envelopes: Sequence[Envelope], *, now: datetime | None = None
    ) -> list[PostdateError | None]:
        """Publish envelopes towards their queues at their due times, pipelining confirms.

        The ladder delay of each is the time left until its due time from ``now``, by
        default from the moment its window of ``PIPELINE_WINDOW`` is published. Returns,
        per envelope and in order, None when the broker confirmed it, or the typed error
        (:class:`DelayError` for a due time beyond the ladder's reach, a
        :class:`PublishError` otherwise).

        Raises:
            PublisherNotStarted: not started, or closed.
        """
        results: list[PostdateError | None] = []
        for start in range(0, len(envelopes), PIPELINE_WINDOW):
            window = envelopes[start : start + PIPELINE_WINDOW]
            planned = _planned(self.names, window, now or datetime.now(UTC))
            outgoing = [item for item in planned if not isinstance(item, DelayError)]
            confirmed = iter(await self._confirmed(outgoing))
            results += [
                item if isinstance(item, DelayError) else next(confirmed) for item in planned
            ]
        return results

    async def republish(self, body: bytes, properties: Properties, queue: str) -> None:
        """Publish a copy of a delivery straight into ``queue``, confirmed (retry, poison
        and replayed copies).

        Raises:
            PublishReturned, PublishNacked, PublishTimeout, PublishInterrupted: the
                publish was not confirmed (see :meth:`send`).
            PublisherNotStarted: not started, or closed.
        """
        _raise_first(await self._confirmed([(body, properties, scheduling.to_queue(queue))]))

    async def _confirmed(self, outgoing: Sequence[_Outgoing]) -> list[PostdateError | None]:
        results: list[PostdateError | None] = []
        for start in range(0, len(outgoing), PIPELINE_WINDOW):
            window = outgoing[start : start + PIPELINE_WINDOW]
            ids = [properties.message_id or "" for _, properties, _ in window]
            if len(set(ids)) < len(ids):
                # aiormq matches a returned message to its publish by message_id: two in
                # flight with one id could swap a return for a confirm. One at a time.
                for item in window:
                    results += await self._confirmed_window([item])
            else:
                results += await self._confirmed_window(window)
        return results

    async def _confirmed_window(self, window: Sequence[_Outgoing]) -> list[PostdateError | None]:
        ids = [properties.message_id or "" for _, properties, _ in window]
        await self._claim(ids)
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                channel = await self._underlay()
                replies = await asyncio.gather(
                    *(
                        channel.basic_publish(
                            body,
                            exchange=target.exchange,
                            routing_key=target.routing_key,
                            properties=properties,
                            mandatory=True,
                        )
                        for body, properties, target in window
                    ),
                    return_exceptions=True,
                )
        except TimeoutError:
            timeout = PublishTimeout(
                f"{len(window)} publish(es) not all confirmed within "
                f"{self.settings.publish_timeout} s (first message {ids[0]})"
            )
            return [timeout] * len(window)
        finally:
            self._release(ids)
        return [
            None if not isinstance(reply, BaseException) else _translate(reply, message_id, target)
            for (_, _, target), message_id, reply in zip(window, ids, replies, strict=True)
        ]

    async def _claim(self, message_ids: Sequence[str]) -> None:
        """Wait until none of ``message_ids`` is in flight, then mark them in flight."""
        for message_id in message_ids:
            while message_id in self._busy_ids:
                await self._busy_ids[message_id].wait()
        claimed = asyncio.Event()
        self._busy_ids.update(dict.fromkeys(message_ids, claimed))

    def _release(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            released = self._busy_ids.pop(message_id, None)
            if released is not None:
                released.set()

    async def _underlay(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None:
            raise PublisherNotStarted("Publisher is not started: use `async with Publisher(...)`")
        return await self._channel.get_underlay_channel()


def _planned(
    names: Names, envelopes: Sequence[Envelope], now: datetime
) -> list[_Outgoing | DelayError]:
    planned: list[_Outgoing | DelayError] = []
    for envelope in envelopes:
        try:
            target = scheduling.plan(names, envelope, now)
        except DelayError as beyond:
            planned.append(beyond)
            continue
        planned.append((envelope.body, envelope.properties(target.cc), target))
    return planned


def _raise_first(results: Iterable[PostdateError | None]) -> None:
    for failure in results:
        if failure is not None:
            raise failure


def _translate(error: BaseException, message_id: str, target: Route) -> PostdateError:
    """The typed error of a failed publish."""
    if not isinstance(error, Exception):
        raise error  # CancelledError and friends are not a publish result
    if isinstance(error, PostdateError):
        return error
    if isinstance(error, aiormq.exceptions.PublishError):
        reply = getattr(error.frame, "reply_text", "returned")
        return PublishReturned(target.exchange, target.routing_key, str(reply))
    if isinstance(error, aiormq.exceptions.DeliveryError):
        return PublishNacked(
            f"broker refused message {message_id} for {target.routing_key!r}: {error}"
        )
    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
        return PublishReturned(target.exchange, target.routing_key, str(error))
    return PublishInterrupted(
        f"publish of message {message_id} to {target.routing_key!r} was interrupted "
        f"(connection or channel lost; it may or may not have arrived): {error!r}"
    )


__all__ = ["PIPELINE_WINDOW", "Publisher"]
