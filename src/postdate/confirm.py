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
from collections.abc import Callable, Iterable, Sequence
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
)
from postdate.logs import get_logger
from postdate.scheduling import Route

# Publishes that share one deadline (the publish timeout).
PIPELINE_WINDOW = 5000
# At most this many publishes are written but not yet confirmed. Each is planned when it
# is written; when a resource alarm blocks the connection, only these were planned before
# it (and may arrive late by the time it lasted), the rest wait and are planned after.
IN_FLIGHT = 500
# Pause before publishing again what a lost connection interrupted.
RETRY_PAUSE_SECONDS = 0.05

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
        """Publish ``pending`` once, at most ``IN_FLIGHT`` unconfirmed at a time; fill
        ``results``; return those a lost connection interrupted, to publish again."""
        underlay = await self._usable()
        in_flight = asyncio.Semaphore(IN_FLIGHT)
        outcomes = await asyncio.gather(
            *(self._publish_one(underlay, plans[index], in_flight) for index in pending)
        )
        again = []
        for index, outcome in zip(pending, outcomes, strict=True):
            results[index] = outcome
            if isinstance(outcome, PublishInterrupted):
                again.append(index)
        return again

    async def _usable(self) -> aiormq.abc.AbstractChannel:
        """The channel once it can take publishes: reopened after a reconnect."""
        await self.channel.ready()
        return await self.channel.get_underlay_channel()

    async def _publish_one(
        self, underlay: aiormq.abc.AbstractChannel, plan: Plan, in_flight: asyncio.Semaphore
    ) -> PostdateError | None:
        async with in_flight:
            # Planned only once the connection is not blocked by a resource alarm, so
            # the ladder delay counts from (about) when the broker takes the message.
            await underlay.connection.ready()
            outgoing = plan(datetime.now(UTC))
            if isinstance(outgoing, PostdateError):
                return outgoing
            message_id = outgoing.properties.message_id or ""
            await self._claim(message_id)
            try:
                await underlay.basic_publish(
                    outgoing.body,
                    exchange=outgoing.route.exchange,
                    routing_key=outgoing.route.routing_key,
                    properties=outgoing.properties,
                    mandatory=True,
                )
            except Exception as error:
                return _translate(error, message_id, outgoing.route)
            finally:
                self._release(message_id)
        return None

    async def _claim(self, message_id: str) -> None:
        """Wait until ``message_id`` is not in flight, then mark it in flight: aiormq
        matches a returned message to its publish by message id, so two in flight with
        one id could swap a return for a confirm."""
        while message_id in self._busy_ids:
            await self._busy_ids[message_id].wait()
        self._busy_ids[message_id] = asyncio.Event()

    def _release(self, message_id: str) -> None:
        released = self._busy_ids.pop(message_id, None)
        if released is not None:
            released.set()


def raise_first(results: Iterable[PostdateError | None]) -> None:
    """Raise the first error among per-publish ``results``, if any."""
    for failure in results:
        if failure is not None:
            raise failure


def _translate(error: Exception, message_id: str, target: Route) -> PostdateError:
    """The typed error of a failed publish."""
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
