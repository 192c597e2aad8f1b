"""The one confirmed-publish path: windows of publishes awaiting broker confirms.

A single publish is a window of one. Each window has one deadline (the publish timeout)
for everything it takes: waiting for a usable channel (reopened after a reconnect, not
blocked by a resource alarm), publishing, and publishing again what a lost connection
interrupted. Each publish is built by its :data:`Plan` at the moment it is written, so a
ladder delay counts from then, however long the window waited. Broker errors become
:class:`~postdate.PublishError` values in one place.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import aiormq
from aio_pika.abc import AbstractRobustChannel

from postdate._errors import (
    PostdateError,
    PublishInterrupted,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
    PublishUnencodable,
)
from postdate.delay._routing import Route
from postdate.observe._logs import get_logger
from postdate.publish._deadlines import Deadlines

# Publishes planned and written together, confirmed within one deadline (the publish
# timeout) before the next ones are planned: when a resource alarm blocks the connection,
# only these were planned before it (and may arrive late by the time it lasted); the
# rest wait for it to end and are planned after.
PIPELINE_WINDOW = 1000
# Pause before publishing again what a lost connection interrupted.
RETRY_PAUSE_SECONDS = 0.05
# After a nack, publishing goes on on a new channel, at most this often (see
# ConfirmedChannel.renew_after_nack).
RENEW_AFTER_NACK_SECONDS = 1.0

# What pamqp raises for a value it has no AMQP encoding for (it writes nothing then).
ENCODING_ERRORS = (TypeError, ValueError, OverflowError, struct.error, UnicodeEncodeError)

log = get_logger(__name__)


class Outgoing(NamedTuple):
    """One publish: the body, its AMQP properties, and where it goes."""

    body: bytes
    properties: aiormq.spec.Basic.Properties
    route: Route


Plan = Callable[[datetime], Outgoing | PostdateError]
"""Builds one publish for the given moment, or says why it cannot be published."""


class ConfirmedChannel:
    """Publishes on ``channel`` (opened with publisher confirms) with ``mandatory`` set
    (but into the delayed-message plugin's exchange), and reports each publish's fate."""

    def __init__(
        self,
        channel: AbstractRobustChannel,
        timeout: float,
        new_channel: Callable[[], Awaitable[AbstractRobustChannel]] | None = None,
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        self.new_channel = new_channel
        self.renewals = 0  # channels replaced after a nack
        self._renewed_at = -RENEW_AFTER_NACK_SECONDS
        self._retired: set[asyncio.Task[None]] = set()
        # Message ids in flight, each with the event its release sets (made only once a
        # publish of the same id waits for it).
        self._busy_ids: dict[str, asyncio.Event | None] = {}
        self._deadlines = Deadlines()

    async def publish(self, plans: Sequence[Plan]) -> list[PostdateError | None]:
        """Publish what ``plans`` build, ``PIPELINE_WINDOW`` at a time; returns, in order,
        None per confirmed publish or its typed error.

        A publish interrupted by a lost connection is published again once the channel
        is back, within the window's deadline: a duplicate at worst (same message id).
        """
        if len(plans) <= PIPELINE_WINDOW:
            return await self._window(plans)
        results: list[PostdateError | None] = []
        for start in range(0, len(plans), PIPELINE_WINDOW):
            results += await self._window(plans[start : start + PIPELINE_WINDOW])
        return results

    async def _window(self, plans: Sequence[Plan]) -> list[PostdateError | None]:
        results: list[PostdateError | None] = [None] * len(plans)
        pending = list(range(len(plans)))
        deadline = self._deadlines.start(self.timeout)
        try:
            while pending:
                pending = await self._attempt(plans, pending, results)
                if pending:
                    log.warning("publish.interrupted", publishes=len(pending), retry=True)
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
        except BaseException as error:
            if not self._deadlines.stop(deadline, error):
                raise
            timeout = PublishTimeout(
                f"{len(pending)} publish(es) not confirmed within {self.timeout} s; they may "
                "have arrived: publish again with the same message id (a duplicate at worst)"
            )
            for index in pending:
                results[index] = timeout
        else:
            self._deadlines.stop(deadline, None)
        return results

    async def _attempt(
        self, plans: Sequence[Plan], pending: list[int], results: list[PostdateError | None]
    ) -> list[int]:
        """Publish ``pending`` once; fill ``results``; return those a lost connection
        interrupted, to publish again."""
        underlay = await self._usable()
        now = datetime.now(UTC)
        if len(pending) == 1:  # a send: no batch to build
            index = pending[0]
            planned = plans[index](now)
            if isinstance(planned, PostdateError):
                results[index] = planned
                return []
            error = await self._send_one(underlay, planned)
            results[index] = error
            if isinstance(error, PublishNacked):
                await self.renew_after_nack()
            return [index] if isinstance(error, PublishInterrupted) else []
        batch: list[tuple[int, Outgoing]] = []
        for index in pending:
            planned = plans[index](now)
            if isinstance(planned, PostdateError):
                results[index] = planned
            else:
                batch.append((index, planned))
        errors = await self._send(underlay, [outgoing for _, outgoing in batch])
        again = []
        nacked = False
        for (index, _), error in zip(batch, errors, strict=True):
            results[index] = error
            if isinstance(error, PublishInterrupted):
                again.append(index)
            nacked = nacked or isinstance(error, PublishNacked)
        if nacked:
            await self.renew_after_nack()
        return again

    async def renew_after_nack(self) -> None:
        """Go on publishing on a new channel (at most every RENEW_AFTER_NACK_SECONDS).

        Seen on RabbitMQ 3.10 in a cluster: a channel that reconnected while a quorum
        queue elected a new leader had every publish to that queue nacked until the old
        leader's node came back, while a new channel on the same connection published
        fine. The nacked publishes are still reported (the caller sends them again); the
        old channel is closed once its publishes in flight had their publish timeout.
        """
        now = time.monotonic()
        if self.new_channel is None or now - self._renewed_at < RENEW_AFTER_NACK_SECONDS:
            return
        self._renewed_at = now
        old, self.channel = self.channel, await self.new_channel()
        self.renewals += 1
        log.warning("publish.channel_renewed", reason="broker nacked a publish")
        retire = asyncio.create_task(self._close_later(old))
        self._retired.add(retire)
        retire.add_done_callback(self._retired.discard)

    async def _close_later(self, channel: AbstractRobustChannel) -> None:
        await asyncio.sleep(self.timeout)
        if not channel.is_closed:
            await channel.close()

    async def _usable(self) -> aiormq.abc.AbstractChannel:
        """The channel once it can take publishes: reopened after a reconnect, and its
        connection not blocked by a resource alarm (so that nothing is planned, then held:
        the ladder delay counts from about when the broker takes the message)."""
        await self.channel.ready()
        underlay = await self.channel.get_underlay_channel()
        await underlay.connection.ready()
        return underlay

    async def _send(
        self, underlay: aiormq.abc.AbstractChannel, batch: Sequence[Outgoing]
    ) -> list[PostdateError | None]:
        if len(batch) == 1:
            return [await self._send_one(underlay, batch[0])]
        ids = [outgoing.properties.message_id or "" for outgoing in batch]
        if len(set(ids)) < len(ids):
            # aiormq matches a returned message to its publish by message_id: two in
            # flight with one id could swap a return for a confirm. One at a time.
            return [await self._send_one(underlay, item) for item in batch]
        await self._claim(ids)
        publishes = [_publish(underlay, outgoing) for outgoing in batch]
        try:
            replies = await asyncio.gather(*publishes, return_exceptions=True)
        finally:
            self._release(ids)
        return [
            _translate(reply, message_id, outgoing.route)
            if isinstance(reply, BaseException)
            else None
            for outgoing, message_id, reply in zip(batch, ids, replies, strict=True)
        ]

    async def _send_one(
        self, underlay: aiormq.abc.AbstractChannel, outgoing: Outgoing
    ) -> PostdateError | None:
        """One publish, awaited in this task (a task per publish costs a send two loop
        turns): None once confirmed, or its typed error."""
        message_id = outgoing.properties.message_id or ""
        if message_id in self._busy_ids:
            await self._claim((message_id,))
        else:
            self._busy_ids[message_id] = None
        try:
            await _publish(underlay, outgoing)
        except Exception as error:
            return _translate(error, message_id, outgoing.route)
        finally:
            self._release((message_id,))
        return None

    async def _claim(self, message_ids: Sequence[str]) -> None:
        """Wait until none of ``message_ids`` is in flight, then mark them in flight."""
        busy = self._busy_ids
        for message_id in message_ids:
            while message_id in busy:
                released = busy[message_id]
                if released is None:
                    released = busy[message_id] = asyncio.Event()
                await released.wait()
        if len(message_ids) == 1:
            busy[message_ids[0]] = None
        else:
            busy.update(dict.fromkeys(message_ids))

    def _release(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            released = self._busy_ids.pop(message_id, None)
            if released is not None:
                released.set()


def _publish(underlay: aiormq.abc.AbstractChannel, outgoing: Outgoing) -> Awaitable[object]:
    """The publish of ``outgoing`` on ``underlay`` (its reply awaits the confirm), mandatory
    unless its route cannot be (see :attr:`Route.mandatory`)."""
    return underlay.basic_publish(
        outgoing.body,
        exchange=outgoing.route.exchange,
        routing_key=outgoing.route.routing_key,
        properties=outgoing.properties,
        mandatory=outgoing.route.mandatory,
    )


def raise_first(results: Iterable[PostdateError | None]) -> None:
    """Raise the first error among per-publish ``results``, if any."""
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
    if isinstance(error, ENCODING_ERRORS):  # raised before anything was written
        return PublishUnencodable(f"message {message_id} cannot be encoded as AMQP: {error!r}")
    return PublishInterrupted(
        f"publish of message {message_id} to {target.routing_key!r} was interrupted "
        f"(connection or channel lost; it may or may not have arrived): {error!r}"
    )
