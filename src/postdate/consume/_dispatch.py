"""Processing one delivery: decode, hold until due, call the handler, settle the outcome.

The decision is :func:`postdate.consume._settle.decide` (pure); this module does the I/O it asks
for. Settling follows reliability rule 2: a retry or poison copy (and any follow-up
command) is confirmed by the broker before the original delivery is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiormq
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from postdate._clock import sleep_until
from postdate._command import Command
from postdate._errors import InvalidMessage
from postdate._outcomes import Outcome, Reason, Skip
from postdate.consume._acks import Acks
from postdate.consume._consumer import Consumer, Registration
from postdate.consume._context import Context
from postdate.consume._retry import RetryPolicy
from postdate.consume._settle import (
    Cancelled,
    Decision,
    Delivery,
    Handled,
    Result,
    Step,
    Stopping,
    TooEarly,
    Undecodable,
    after_failed_publish,
    decide,
)
from postdate.delay._routing import LADDER_LEAD
from postdate.observe import _metrics as metrics
from postdate.observe._logs import emit, get_logger
from postdate.parking._poison import safe_repr
from postdate.publish._confirm import raise_first
from postdate.publish._envelope import Envelope, copy_properties
from postdate.publish._publisher import Publisher

if TYPE_CHECKING:  # the schedule needs the sql extra; a worker without one never loads it
    from postdate.schedule.watch import CancelWatch

# The latest a delivery may come before its due time and be held for it: the ladder's
# lead, the sub-second remainder it does not carry, and half a second of clock skew
# between publisher and worker. Earlier deliveries go back to the ladder (TooEarly).
HOLD_LIMIT_SECONDS = LADDER_LEAD.total_seconds() + 1.5
_LOST_CHANNEL = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)
ACK_LOST = "ack lost: channel closed, will be redelivered"
_WARNING_OUTCOMES = frozenset({Outcome.POISONED, Outcome.ABANDONED})  # the rest log at INFO

log = get_logger(__name__)


@dataclass
class Dispatcher:
    """Turns each delivery from a command queue into exactly one outcome.

    ``handler_slots`` bounds handlers running at once; once ``stopping`` is set,
    deliveries not yet in a handler are left unacked for redelivery. With ``schedule``
    set, a cancelled command is acked as ``cancelled`` instead of handled, and every
    outcome is recorded for the timeline.
    """

    app: Consumer
    publisher: Publisher
    handler_slots: asyncio.Semaphore | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    schedule: CancelWatch | None = None
    acks: Acks = field(default_factory=Acks)

    async def process(self, message: AbstractIncomingMessage, queue: str) -> Outcome:
        """Decode, hold, handle and settle ``message`` from ``queue``; returns its outcome."""
        started = time.monotonic()
        headers = message.headers or {}
        try:
            envelope = Envelope.from_incoming(message)
            registration = self._registration(envelope)
            command = _decode(registration, envelope)
        except Exception as error:  # a validator may raise anything: still invalid input
            undecodable = Delivery(queue, headers)
            return await self._settle(message, undecodable, Undecodable(error), None, started)
        delivery = Delivery(queue, headers, envelope)
        watch = self.schedule
        if watch is not None and watch.is_cancelled(envelope.message_id):  # spare the hold
            return await self._settle(message, delivery, Cancelled(), None, started)
        early = (envelope.due_at - datetime.now(UTC)).total_seconds()
        if early > HOLD_LIMIT_SECONDS:
            return await self._settle(
                message, delivery, TooEarly(early), None, started, early_seconds=round(early, 3)
            )
        if early > 0:
            with metrics.held(queue).track_inprogress():
                await sleep_until(envelope.due_at)
            started = time.monotonic()
        if watch is not None:
            if watch.stale:  # rare: a coroutine per delivery would cost every one of them
                await watch.wait_fresh()
            if watch.is_cancelled(envelope.message_id):
                return await self._settle(message, delivery, Cancelled(), None, started)
            watch.started(envelope.message_id)  # no await since the check: it is exact
        metrics.observe_start(
            queue,
            envelope.attempt,
            max(0.0, (datetime.now(UTC) - envelope.due_at).total_seconds()),
        )
        result = await self._handle(envelope, registration, command)
        return await self._settle(message, delivery, result, registration.policy, started)

    def _registration(self, envelope: Envelope) -> Registration:
        registration = self.app.registrations.get(envelope.type)
        if registration is None:
            raise InvalidMessage(Reason.UNKNOWN_TYPE, f"no handler for type {envelope.type!r}")
        return registration

    async def _handle(
        self, envelope: Envelope, registration: Registration, command: Command
    ) -> Result:
        context = Context.for_envelope(envelope, log)
        try:
            try:
                # Only the handler takes a slot: a message held for its due time does not.
                async with self.handler_slots or contextlib.nullcontext():
                    if self.stopping.is_set():
                        return Stopping()
                    await registration.handler(command, context)
            except Skip as skip:
                await self._send_follow_ups(context)
                return skip
            await self._send_follow_ups(context)
        except Exception as error:  # the handler's failure, or its follow-ups' publish
            return error
        return Handled

    async def _send_follow_ups(self, context: Context) -> None:
        if context.follow_ups:
            await self._publish(context.follow_ups)

    async def _publish(self, envelopes: list[Envelope]) -> None:
        # Never declares a queue: its name comes from a message (a header anyone who can
        # publish may set), so a missing one's commands go to the catch-all queue.
        raise_first(await self.publisher.publish_each(envelopes, declare_queues=False))

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        result: Result,
        policy: RetryPolicy | None,
        started: float,
        **fields: object,
    ) -> Outcome:
        try:
            outcome, reason, error = await self._settle_or_lose(message, delivery, result, policy)
        except Exception as failure:  # a bug of ours: recorded, then the worker gives it back
            failed = f"settle failed: {safe_repr(failure)}"
            self._record(Outcome.ABANDONED, message, delivery, started, reason=failed, **fields)
            raise
        self._record(outcome, message, delivery, started, reason=reason, error=error, **fields)
        return outcome

    async def _settle_or_lose(
        self,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        result: Result,
        policy: RetryPolicy | None,
    ) -> tuple[Outcome, str, str]:
        """Decide and carry out the settlement; returns (outcome, reason, error).

        A delivery whose channel closed meanwhile cannot be acked any more (the broker
        delivers it again): it is abandoned, whether its ack failed or the close cancelled
        the settle step (aiormq cancels the deliveries of a channel that closes).
        """
        try:
            decision = decide(delivery, result, policy, datetime.now(UTC))
            outcome, reason = await self._execute(message, delivery, decision)
        except asyncio.CancelledError as cut:
            if not _channel_lost(message):
                raise  # e.g. cut off by the grace period: the worker records it
            _uncancel()
            return Outcome.ABANDONED, ACK_LOST, _cause(cut)
        except _LOST_CHANNEL as error:  # only the ack raises these out of _execute
            return Outcome.ABANDONED, ACK_LOST, safe_repr(error)
        return outcome, reason, ""

    async def _execute(
        self, message: AbstractIncomingMessage, delivery: Delivery, decision: Decision
    ) -> tuple[Outcome, str]:
        try:
            if decision.step is Step.COPY_THEN_ACK:
                copy = copy_properties(message, decision.headers)
                await self.publisher.republish(message.body, copy, decision.queue)
            elif decision.step is Step.RESCHEDULE_THEN_ACK:
                again = decision.envelope or delivery.envelope
                if again is not None:
                    await self._publish([again])
        except Exception as error:
            fallback = after_failed_publish(decision, delivery, error, datetime.now(UTC))
            return await self._execute(message, delivery, fallback)
        if decision.step is Step.LEAVE:
            return decision.outcome, decision.reason
        if decision.step is Step.GIVE_BACK:
            await self._give_back(message, decision.reason)
            return decision.outcome, decision.reason
        await self._ack(message)
        return decision.outcome, decision.reason

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message``, coalesced with the other acks of its channel in this turn.

        Raises:
            aiormq.exceptions.ChannelInvalidStateError: its channel is gone (its tag
                means nothing on a new one; the broker delivers it again).
        """
        tag = message.delivery_tag
        if tag is None:  # not a consumed delivery: nothing to coalesce it with
            await message.ack()
        else:
            await self.acks.of(message.channel).ack(tag)

    async def _give_back(self, message: AbstractIncomingMessage, reason: str) -> None:
        """The successor could not be confirmed: give the delivery back, never drop it."""
        log.error("settle.failed", message_id=message.message_id, error=reason)
        await self.give_back(message)

    async def give_back(self, message: AbstractIncomingMessage) -> None:
        """Nack ``message`` for redelivery. If its channel is gone, the broker requeues
        its unacked deliveries by itself."""
        tag = message.delivery_tag
        with contextlib.suppress(*_LOST_CHANNEL):
            if tag is None:
                await message.nack(requeue=True)
                return
            acks = self.acks.of(message.channel)
            if acks.is_settled(tag):  # acked already: a second settle would close the channel
                return
            await message.nack(requeue=True)
            acks.given_back(tag)  # after the nack: no multiple ack may cover it before

    def abandoned(self, message: AbstractIncomingMessage, queue: str, reason: str) -> None:
        """Record a delivery left unacked without a decision (e.g. a handler cut off by
        the grace period): the broker redelivers it; its outcome line still appears."""
        delivery = Delivery(queue, message.headers or {})
        self._record(Outcome.ABANDONED, message, delivery, time.monotonic(), reason=reason)

    def _record(
        self,
        outcome: Outcome,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        started: float,
        **fields: object,
    ) -> None:
        duration = time.monotonic() - started
        self.outcomes[outcome] += 1
        kind, queue, ended = message.type or "", delivery.queue, outcome.value
        metrics.messages(queue, kind, ended).inc()
        metrics.handle_seconds(queue, kind).observe(duration)
        line: dict[str, object] = {
            "message_id": message.message_id,
            "type": kind,
            "queue": queue,
            "outcome": ended,
            "duration": round(duration, 4),
            "attempt": delivery.attempt,
        }
        for key, value in fields.items():
            if value not in ("", None):
                line[key] = value
        # One line per message, so the cheap way: bind() hands over the logger structlog
        # cached (an attribute of the lazy proxy is looked up through it on every call),
        # and emit() runs its processors without passing the fields as keywords.
        level = "warning" if outcome in _WARNING_OUTCOMES else "info"
        emit(log.bind(), level, "message", line)
        if self.schedule is not None:
            self.schedule.record(outcome, line, message.correlation_id)


def _channel_lost(message: AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` came on is closed (so its delivery tag is void)."""
    try:
        return message.channel.is_closed
    except _LOST_CHANNEL:  # aio-pika raises ChannelInvalidStateError for a closed one
        return True


def _uncancel() -> None:
    """Take back the cancellation just caught: the task goes on to record its outcome."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _cause(cut: asyncio.CancelledError) -> str:
    """What cancelled the task: aiormq gives the reason its channel closed."""
    cause = cut.args[0] if cut.args else None
    if isinstance(cause, BaseException):
        return safe_repr(cause)
    return "cancelled" if cause is None else repr(cause)


def _decode(registration: Registration, envelope: Envelope) -> Command:
    try:
        return registration.command.model_validate_json(envelope.body)
    except ValidationError as exc:
        kinds = {error["type"] for error in exc.errors()}
        reason = Reason.INVALID_JSON if "json_invalid" in kinds else Reason.SCHEMA
        raise InvalidMessage(reason, str(exc)) from None
