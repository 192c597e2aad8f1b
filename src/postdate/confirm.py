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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import aiormq
from aio_pika.abc import AbstractRobustChannel

from postdate.errors import (
    PostdateError,
    PublishInterrupted,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
    PublishUnencodable,
)
from postdate.logs import get_logger
from postdate.scheduling import Route

# Publishes planned and written together, confirmed within one deadline (the publish
# timeout) before the next ones are planned: when a resource alarm blocks the connection,
# only these were planned before it (and may arrive late by the time it lasted); the
# rest wait for it to end and are planned after.
PIPELINE_WINDOW = 1000
# Pause before publishing again what a lost connection interrupted.
RETRY_PAUSE_SECONDS = 0.05

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
    """Publishes on ``channel`` (opened with publisher confirms) with ``mandatory`` set,
    and reports each publish's fate."""

    def __init__(self, channel: AbstractRobustChannel, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self._busy_ids: dict[str, asyncio.Event] = {}

    async def publish(self, plans: Sequence[Plan]) -> list[PostdateError | None]:
        """Publish what ``plans`` build, ``PIPELINE_WINDOW`` at a time; returns, in order,
        None per confirmed publish or its typed error.

        A publish interrupted by a lost connection is published again once the channel
        is back, within the window's deadline: a duplicate at worst (same message id).
        """
        results: list[PostdateError | None] = []
        for start in range(0, len(plans), PIPELINE_WINDOW):
            results += await self._window(plans[start : start + PIPELINE_WINDOW])
        return results

    async def _window(self, plans: Sequence[Plan]) -> list[PostdateError | None]:
        results: list[PostdateError | None] = [None] * len(plans)
        pending = list(range(len(plans)))
        try:
            async with asyncio.timeout(self.timeout):
                while pending:
                    pending = await self._attempt(plans, pending, results)
                    if pending:
                        log.warning("publish.interrupted", publishes=len(pending), retry=True)
                        await asyncio.sleep(RETRY_PAUSE_SECONDS)
        except TimeoutError:
            timeout = PublishTimeout(
                f"{len(pending)} publish(es) not confirmed within {self.timeout} s; they may "
                "have arrived: publish again with the same message id (a duplicate at worst)"
            )
            for index in pending:
                results[index] = timeout
        return results

    async def _attempt(
        self, plans: Sequence[Plan], pending: list[int], results: list[PostdateError | None]
    ) -> list[int]:
        """Publish ``pending`` once; fill ``results``; return those a lost connection
        interrupted, to publish again."""
        underlay = await self._usable()
        now = datetime.now(UTC)
        batch: list[tuple[int, Outgoing]] = []
        for index in pending:
            planned = plans[index](now)
            if isinstance(planned, PostdateError):
                results[index] = planned
            else:
                batch.append((index, planned))
        errors = await self._send(underlay, [outgoing for _, outgoing in batch])
        again = []
        for (index, _), error in zip(batch, errors, strict=True):
            results[index] = error
            if isinstance(error, PublishInterrupted):
                again.append(index)
        return again

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
        ids = [outgoing.properties.message_id or "" for outgoing in batch]
        if len(set(ids)) < len(ids):
            # aiormq matches a returned message to its publish by message_id: two in
            # flight with one id could swap a return for a confirm. One at a time.
            return [(await self._send(underlay, [item]))[0] for item in batch]
        await self._claim(ids)
        publishes = [
            underlay.basic_publish(
                outgoing.body,
                exchange=outgoing.route.exchange,
                routing_key=outgoing.route.routing_key,
                properties=outgoing.properties,
                mandatory=True,
            )
            for outgoing in batch
        ]
        try:
            if len(publishes) == 1:  # a task per publish costs a single send two loop turns
                replies: list[object] = [await _settle(publishes[0])]
            else:
                replies = await asyncio.gather(*publishes, return_exceptions=True)
        finally:
            self._release(ids)
        return [
            _translate(reply, message_id, outgoing.route)
            if isinstance(reply, BaseException)
            else None
            for outgoing, message_id, reply in zip(batch, ids, replies, strict=True)
        ]

    async def _claim(self, message_ids: Sequence[str]) -> None:
        """Wait until none of ``message_ids`` is in flight, then mark them in flight."""
        for message_id in message_ids:
            while message_id in self._busy_ids:
                await self._busy_ids[message_id].wait()
        self._busy_ids.update(dict.fromkeys(message_ids, asyncio.Event()))

    def _release(self, message_ids: Iterable[str]) -> None:
        for message_id in message_ids:
            released = self._busy_ids.pop(message_id, None)
            if released is not None:
                released.set()


async def _settle(publish: Awaitable[object]) -> object:
    """The publish's reply, or the exception it raised (as gather's return_exceptions)."""
    try:
        return await publish
    except Exception as error:
        return error


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
