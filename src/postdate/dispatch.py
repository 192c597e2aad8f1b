"""Processing one delivery: decode, hold until due, call the handler, settle the outcome.

Settling follows reliability rule 2: a retry or poison copy (and any follow-up command)
is confirmed by the broker before the original delivery is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiormq
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractMessage
from pydantic import ValidationError

from postdate import metrics
from postdate.command import Command
from postdate.consumer import Consumer, Registration
from postdate.context import Context
from postdate.envelope import ATTEMPT, Envelope
from postdate.errors import DelayError, InvalidMessage, PublishReturned
from postdate.outcomes import Outcome, Retry, Skip
from postdate.poison import Reason, bounded, poison_message, safe_repr
from postdate.publisher import Publisher
from postdate.topology import poison_queue, retry_queue

HOLD_LIMIT_SECONDS = 1.0
LAST_ERROR = "x-postdate-last-error"

log = structlog.get_logger("postdate.worker")


@dataclass
class Dispatcher:
    """Turns each delivery from ``queue`` into exactly one outcome."""

    app: Consumer
    publisher: Publisher
    handler_slots: asyncio.Semaphore | None = None  # bounds handlers running at once
    stopping: bool = False  # set on shutdown: deliveries not yet in a handler stay unacked
    outcomes: Counter[Outcome] = field(default_factory=Counter)

    async def process(self, message: AbstractIncomingMessage, queue: str) -> Outcome:
        started = time.monotonic()
        try:
            envelope = Envelope.from_incoming(message)
            registration = self._registration(envelope)
            command = _decode(registration, envelope)
        except Exception as error:  # a validator may raise anything: still invalid input
            invalid = (
                error
                if isinstance(error, InvalidMessage)
                else InvalidMessage(Reason.SCHEMA, safe_repr(error))
            )
            attempt = _attempt_of(message)
            outcome = await self._poison(message, queue, invalid.reason, attempt, error)
            self._record(outcome, message, queue, started, attempt=attempt, reason=invalid.reason)
            return outcome
        early = (envelope.due_at - datetime.now(UTC)).total_seconds()
        if early > HOLD_LIMIT_SECONDS:
            outcome = await self._reschedule(message, queue, envelope)
            self._record(
                outcome,
                message,
                queue,
                started,
                attempt=envelope.attempt,
                early_seconds=round(early, 3),
            )
            return outcome
        if early > 0:
            await asyncio.sleep(early)
            started = time.monotonic()
        metrics.lateness_seconds(queue).observe(
            max(0.0, (datetime.now(UTC) - envelope.due_at).total_seconds())
        )
        outcome, reason = await self._handle(message, queue, envelope, registration, command)
        self._record(outcome, message, queue, started, attempt=envelope.attempt, reason=reason)
        return outcome

    def _registration(self, envelope: Envelope) -> Registration:
        registration = self.app.registrations.get(envelope.type)
        if registration is None:
            raise InvalidMessage(Reason.UNKNOWN_TYPE, f"no handler for type {envelope.type!r}")
        return registration

    async def _handle(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        envelope: Envelope,
        registration: Registration,
        command: Command,
    ) -> tuple[Outcome, str]:
        context = Context.for_envelope(envelope, self.publisher, log)
        try:
            try:
                # Only the handler takes a slot: a message held for its due time does not.
                async with self.handler_slots or contextlib.nullcontext():
                    if self.stopping:
                        return Outcome.ABANDONED, "worker stopping"  # the broker redelivers
                    await registration.handler(command, context)
            except Skip as skip:
                await context.flush()
                return await self._ack(message, Outcome.SKIPPED), skip.reason
            await context.flush()
        except Exception as error:  # the handler's failure, or its follow-ups' publish
            return await self._fail(message, queue, envelope, registration, error), safe_repr(error)
        return await self._ack(message, Outcome.HANDLED), ""

    async def _fail(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        envelope: Envelope,
        registration: Registration,
        error: Exception,
    ) -> Outcome:
        policy = registration.policy
        if policy.is_permanent(error):
            return await self._poison(message, queue, Reason.PERMANENT, envelope.attempt, error)
        if policy.exhausted(envelope.attempt):
            return await self._poison(message, queue, Reason.EXHAUSTED, envelope.attempt, error)
        after = error.after if isinstance(error, Retry) else None
        tier = policy.tier_for(envelope.attempt, after)
        copy = envelope.next_attempt(**{LAST_ERROR: bounded(safe_repr(error), 500)})
        try:
            await self.publisher.publish_to_queue(copy.to_message(), retry_queue(queue, tier))
        except PublishReturned as missing:  # the tier is gone: park it rather than loop
            return await self._poison(
                message, queue, Reason.RETRY_UNAVAILABLE, envelope.attempt, missing
            )
        except Exception as exc:
            return await self._requeue(message, exc)
        return await self._ack(message, Outcome.RETRIED)

    async def _poison(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        reason: str,
        attempts: int,
        error: BaseException,
    ) -> Outcome:
        copy = poison_message(
            message, reason=reason, origin_queue=queue, attempts=attempts, error=error
        )
        return await self._settle_with(message, copy, poison_queue(queue), Outcome.POISONED)

    async def _reschedule(
        self, message: AbstractIncomingMessage, queue: str, envelope: Envelope
    ) -> Outcome:
        """Over a second early (e.g. a replayed or hand-published message): back to the ladder."""
        try:
            await self.publisher.publish_envelope(envelope)
        except DelayError as beyond:  # due further out than the ladder reaches
            return await self._poison(message, queue, "invalid-header", envelope.attempt, beyond)
        except Exception as exc:
            return await self._requeue(message, exc)
        return await self._ack(message, Outcome.RESCHEDULED)

    async def _settle_with(
        self,
        message: AbstractIncomingMessage,
        copy: AbstractMessage,
        target_queue: str,
        outcome: Outcome,
    ) -> Outcome:
        try:
            await self.publisher.publish_to_queue(copy, target_queue)
        except Exception as exc:
            return await self._requeue(message, exc)
        return await self._ack(message, outcome)

    async def _requeue(self, message: AbstractIncomingMessage, exc: BaseException) -> Outcome:
        """The successor could not be confirmed: give the delivery back, never drop it."""
        log.error("settle.failed", message_id=message.message_id, error=repr(exc))
        # If the channel is gone, the broker requeues its unacked deliveries by itself.
        with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
            await message.nack(requeue=True)
        return Outcome.ABANDONED

    async def _ack(self, message: AbstractIncomingMessage, outcome: Outcome) -> Outcome:
        try:
            await message.ack()
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The delivery came on a channel that is gone; its tag means nothing on the
            # new one. The broker redelivers it: a duplicate, which handlers tolerate.
            log.warning("ack.lost", message_id=message.message_id, error=repr(exc))
            return Outcome.ABANDONED
        return outcome

    def _record(
        self,
        outcome: Outcome,
        message: AbstractIncomingMessage,
        queue: str,
        started: float,
        **fields: object,
    ) -> None:
        duration = time.monotonic() - started
        self.outcomes[outcome] += 1
        kind = message.type or ""
        metrics.messages(queue, kind, outcome.value).inc()
        metrics.handle_seconds(queue, kind).observe(duration)
        level = log.warning if outcome in (Outcome.POISONED, Outcome.ABANDONED) else log.info
        level(
            "message",
            message_id=message.message_id,
            type=kind,
            queue=queue,
            outcome=outcome.value,
            duration=round(duration, 4),
            **{key: value for key, value in fields.items() if value not in ("", None)},
        )


def _decode(registration: Registration, envelope: Envelope) -> Command:
    try:
        return registration.command.model_validate_json(envelope.body)
    except ValidationError as exc:
        kinds = {error["type"] for error in exc.errors()}
        reason = Reason.INVALID_JSON if "json_invalid" in kinds else Reason.SCHEMA
        raise InvalidMessage(reason, str(exc)) from None


def _attempt_of(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPT)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
