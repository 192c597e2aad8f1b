"""An in-memory broker side for unit tests of the consuming path: no RabbitMQ needed.

:class:`MemoryChannel` stands in for the aiormq channel a delivery came on, as far as
:mod:`postdate.consume` uses one (``is_closed``, ``create_task``, ``basic_ack``,
``basic_nack``, ``basic_reject``). It keeps what the broker would: the delivery tags it
handed out and not yet settled, every frame in order, and the tags acked (a multiple ack
covers every outstanding tag up to its own) or given back. Like RabbitMQ, it closes itself
on a frame naming a tag that is not outstanding (406 PRECONDITION_FAILED, "unknown
delivery tag"): :attr:`MemoryChannel.error` says so, and tests assert it stays None.

:class:`MemoryMessage` is a delivery on such a channel, with what
:class:`aio_pika.abc.AbstractIncomingMessage` offers and the dispatcher reads (body,
headers, the AMQP properties, the delivery tag, ``ack``/``nack``/``reject``).

:class:`MemoryPublisher` records what the dispatcher asks of its
:class:`~postdate.publish._publisher.Publisher` (``republish``, ``publish_each``); its
confirms can be held until released, and can fail with a given postdate error.

:class:`MemoryHandler` is a handler that records its calls, and can wait for a gate or
raise.

The message and the publisher are cast (:meth:`MemoryMessage.incoming`,
:meth:`MemoryPublisher.as_publisher`) to the types the code under test is annotated with,
instead of subclassing the aio-pika abstract classes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import aiormq
from aio_pika.abc import AbstractIncomingMessage, HeadersType
from aio_pika.exceptions import MessageProcessError
from aiormq.exceptions import ChannelInvalidStateError, ChannelPreconditionFailed

from postdate._command import Command
from postdate._errors import PostdateError
from postdate.consume._context import Context
from postdate.publish._envelope import Envelope
from postdate.publish._publisher import Publisher

T = TypeVar("T")


@dataclass(frozen=True)
class Frame:
    """One settle frame the channel received: ``method`` is ack, nack or reject."""

    method: str
    tag: int
    multiple: bool = False
    requeue: bool | None = None


class MemoryChannel:
    """The channel deliveries come on, as the broker sees it settled (see module doc).

    ``journal`` (shared with a :class:`MemoryPublisher`, if given) gets a line per frame,
    e.g. ``ack 3 multiple`` or ``nack 2 requeue``, so tests can check the order of
    confirms and acks.
    """

    def __init__(self, journal: list[str] | None = None) -> None:
        self.journal: list[str] = journal if journal is not None else []
        self.is_closed = False
        self.error: str | None = None  # why the "broker" closed this channel, if it did
        self.frames: list[Frame] = []
        self.outstanding: set[int] = set()  # delivered, not yet acked or given back
        self.acked: set[int] = set()
        self.given_back: set[int] = set()  # nacked or rejected with requeue
        self.dropped: set[int] = set()  # nacked or rejected without requeue
        self._tags = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()

    def next_tag(self) -> int:
        """Hand out the next delivery tag (1, 2, ... as a broker does per channel)."""
        tag = next(self._tags)
        self.outstanding.add(tag)
        return tag

    @property
    def settled(self) -> set[int]:
        """Every tag acked or given back (or dropped)."""
        return self.acked | self.given_back | self.dropped

    def create_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this channel: :meth:`close` cancels it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        """Ack ``delivery_tag`` (and with ``multiple`` every outstanding tag below it)."""
        self._check_open()
        if delivery_tag not in self.outstanding:
            self._fail(f"unknown delivery tag {delivery_tag}")
        covered = {t for t in self.outstanding if t <= delivery_tag} if multiple else {delivery_tag}
        self.outstanding -= covered
        self.acked |= covered
        self.frames.append(Frame("ack", delivery_tag, multiple))
        self.journal.append(f"ack {delivery_tag}" + (" multiple" if multiple else ""))
        if wait:
            await asyncio.sleep(0)  # the write of the frame takes a loop turn

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True
    ) -> None:
        """Give ``delivery_tag`` back (``requeue``) or drop it."""
        self._settle_back("nack", delivery_tag, multiple, requeue)
        await asyncio.sleep(0)

    async def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        """Like :meth:`basic_nack` of one tag."""
        self._settle_back("reject", delivery_tag, False, requeue)
        await asyncio.sleep(0)

    def close(self) -> None:
        """Close the channel: its tasks are cancelled, its tags void (the broker requeues
        what was outstanding)."""
        self.is_closed = True
        for task in list(self._tasks):
            task.cancel()

    def _settle_back(self, method: str, tag: int, multiple: bool, requeue: bool) -> None:
        self._check_open()
        if tag not in self.outstanding:
            self._fail(f"unknown delivery tag {tag}")
        covered = {t for t in self.outstanding if t <= tag} if multiple else {tag}
        self.outstanding -= covered
        (self.given_back if requeue else self.dropped).update(covered)
        self.frames.append(Frame(method, tag, multiple, requeue))
        self.journal.append(f"{method} {tag}" + (" requeue" if requeue else ""))

    def _check_open(self) -> None:
        if self.is_closed:
            raise ChannelInvalidStateError("memory channel is closed")

    def _fail(self, reason: str) -> None:
        self.error = self.error or reason
        self.close()
        raise ChannelPreconditionFailed(f"PRECONDITION_FAILED - {reason}")


class MemoryMessage:
    """One delivery on a :class:`MemoryChannel` (see module doc).

    ``delivery_tag`` None makes a message that was not consumed (``get``-like): it is
    settled through ``ack``/``nack`` directly, on no tag.
    """

    def __init__(
        self,
        channel: MemoryChannel,
        *,
        body: bytes,
        headers: HeadersType | None = None,
        message_id: str | None = None,
        type: str | None = None,  # the AMQP property's name, as aio-pika calls it
        correlation_id: str | None = None,
        timestamp: datetime | None = None,
        content_type: str | None = "application/json",
        delivery_mode: int | None = 2,
        expiration: int | None = None,
        user_id: str | None = None,
        consumed: bool = True,
    ) -> None:
        self._channel = channel
        self.body = body
        self.headers: HeadersType = dict(headers or {})
        self.message_id = message_id
        self.type = type
        self.correlation_id = correlation_id
        self.timestamp = timestamp
        self.content_type = content_type
        self.delivery_mode = delivery_mode
        self.expiration = expiration
        self.user_id = user_id
        self.delivery_tag = channel.next_tag() if consumed else None
        self.processed = False

    @classmethod
    def of(
        cls,
        channel: MemoryChannel,
        envelope: Envelope,
        *,
        body: bytes | None = None,
        type: str | None = None,
        headers: HeadersType | None = None,
    ) -> MemoryMessage:
        """The delivery of ``envelope`` as the publisher sends it, with ``body``,
        ``type`` or extra (broker) ``headers`` in place of its own if given."""
        properties = envelope.properties()
        return cls(
            channel,
            body=envelope.body if body is None else body,
            headers={**(properties.headers or {}), **(headers or {})},
            message_id=properties.message_id,
            type=type or properties.message_type,
            correlation_id=properties.correlation_id,
            timestamp=properties.timestamp,
        )

    def incoming(self) -> AbstractIncomingMessage:
        """This message as the type the dispatcher takes."""
        return cast(AbstractIncomingMessage, self)

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """Its channel; raises ChannelInvalidStateError once closed, as aio-pika does."""
        if self._channel.is_closed:
            raise ChannelInvalidStateError("memory channel is closed")
        return cast(aiormq.abc.AbstractChannel, self._channel)

    @property
    def properties(self) -> aiormq.spec.Basic.Properties:
        """A new properties object each time (as aio-pika builds one)."""
        return aiormq.spec.Basic.Properties(
            content_type=self.content_type,
            correlation_id=self.correlation_id,
            delivery_mode=self.delivery_mode,
            expiration=None if self.expiration is None else str(self.expiration),
            headers=self.headers,
            message_id=self.message_id,
            message_type=self.type,
            timestamp=self.timestamp,
            user_id=self.user_id,
        )

    async def ack(self, multiple: bool = False) -> None:
        self._process()
        if self.delivery_tag is not None:
            await self.channel.basic_ack(self.delivery_tag, multiple=multiple)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self._process()
        if self.delivery_tag is not None:
            await self.channel.basic_nack(self.delivery_tag, multiple=multiple, requeue=requeue)

    async def reject(self, requeue: bool = False) -> None:
        self._process()
        if self.delivery_tag is not None:
            await self.channel.basic_reject(self.delivery_tag, requeue=requeue)

    def _process(self) -> None:
        if self.processed:
            raise MessageProcessError("Message already processed", self.incoming())
        self.processed = True


@dataclass(frozen=True)
class Republished:
    """One ``Publisher.republish`` call: a copy of a delivery straight into ``queue``."""

    body: bytes
    properties: aiormq.spec.Basic.Properties
    queue: str

    @property
    def headers(self) -> HeadersType:
        return self.properties.headers or {}


@dataclass(frozen=True)
class Published:
    """One ``Publisher.publish_each`` call."""

    envelopes: tuple[Envelope, ...]
    declare_queues: bool


@dataclass
class MemoryPublisher:
    """Records ``republish`` and ``publish_each`` calls; confirms them at once, unless
    :meth:`hold` was called (then each waits until :meth:`release`). Each call's result
    is the next of ``failures`` (one per call, in order) while any is left, else
    ``failure`` (None: confirmed).

    ``journal`` gets ``republish <queue>`` / ``publish <queues>`` when a call is made and
    ``confirmed``/``failed <error type>`` when its confirm arrives.
    """

    journal: list[str] = field(default_factory=list)
    failure: PostdateError | None = None
    failures: list[PostdateError | None] = field(default_factory=list)
    republished: list[Republished] = field(default_factory=list)
    published: list[Published] = field(default_factory=list)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)  # a confirm is held
    _gate: asyncio.Event | None = None

    def as_publisher(self) -> Publisher:
        """This publisher as the type the dispatcher and the worker take."""
        return cast(Publisher, self)

    def hold(self) -> None:
        """Hold every confirm from now until :meth:`release`."""
        self._gate = asyncio.Event()

    def release(self, failure: PostdateError | None = None) -> None:
        """Let the held confirms arrive: each confirmed, or failed with ``failure``."""
        assert self._gate is not None, "hold() first"
        self.failure = failure
        self._gate.set()

    async def republish(
        self, body: bytes, properties: aiormq.spec.Basic.Properties, queue: str
    ) -> None:
        self.republished.append(Republished(body, properties, queue))
        self.journal.append(f"republish {queue}")
        error = await self._confirm()
        if error is not None:
            raise error

    async def publish_each(
        self, envelopes: Sequence[Envelope], *, declare_queues: bool = True
    ) -> list[PostdateError | None]:
        self.published.append(Published(tuple(envelopes), declare_queues))
        self.journal.append("publish " + " ".join(envelope.queue for envelope in envelopes))
        error = await self._confirm()
        return [error for _ in envelopes]

    async def _confirm(self) -> PostdateError | None:
        if self._gate is not None:
            self.waiting.set()
            await self._gate.wait()
        error = self.failures.pop(0) if self.failures else self.failure
        self.journal.append("confirmed" if error is None else f"failed {type(error).__name__}")
        return error


@dataclass
class MemoryHandler:
    """A handler: records each call and when it came (wall clock), queues ``follow_ups``
    on its context, waits for ``gate`` if set (``entered`` is set on entry), then raises
    ``raises`` if set. ``returned`` lists the commands it returned for, ``cancelled`` those
    it was cancelled in."""

    raises: BaseException | None = None
    gate: asyncio.Event | None = None
    follow_ups: list[Command] = field(default_factory=list)
    calls: list[Command] = field(default_factory=list)
    called_at: list[datetime] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    returned: list[Command] = field(default_factory=list)
    cancelled: list[Command] = field(default_factory=list)

    async def __call__(self, command: Command, context: Context) -> None:
        self.called_at.append(datetime.now(UTC))
        self.calls.append(command)
        self.entered.set()
        for follow_up in self.follow_ups:
            context.follow_up(follow_up)
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(command)
                raise
        if self.raises is not None:
            raise self.raises
        self.returned.append(command)
