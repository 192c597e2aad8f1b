"""What to do with a delivery once its fate is known: a pure decision, no broker I/O.

:func:`decide` maps (delivery, result, retry policy, now) to a :class:`Decision`;
:func:`after_failed_publish` says what to do when the copy a decision asked for could
not be confirmed. :mod:`postdate.consume._dispatch` carries decisions out, in the order reliability
rule 2 asks for: a copy is confirmed by the broker before the delivery is acked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from aio_pika.abc import HeadersType

from postdate._errors import DelayError, InvalidMessage, PublishReturned
from postdate._outcomes import Outcome, Reason, Retry, Skip
from postdate.broker._topology import poison_queue, retry_queue
from postdate.consume._retry import RetryPolicy
from postdate.parking._poison import bounded, poison_headers, safe_repr
from postdate.publish._envelope import ATTEMPT, Envelope, encodable_text

LAST_ERROR = "x-postdate-last-error"
LAST_ERROR_CHARS = 500


class Step(StrEnum):
    """The broker work a decision asks for."""

    ACK = "ack"
    COPY_THEN_ACK = "copy-then-ack"  # publish a copy into `queue`, confirmed, then ack
    RESCHEDULE_THEN_ACK = "reschedule-then-ack"  # back through the ladder, then ack
    GIVE_BACK = "give-back"  # nack with requeue: the broker delivers it again
    LEAVE = "leave"  # neither ack nor nack: redelivered when the channel closes


@dataclass(frozen=True)
class Delivery:
    """What a decision needs to know of one delivery from command queue ``queue``."""

    queue: str
    headers: HeadersType
    envelope: Envelope | None = None  # None when the delivery did not decode

    @property
    def attempt(self) -> int:
        """The attempt this delivery is, from its envelope or, failing that, its header."""
        if self.envelope is not None:
            return self.envelope.attempt
        value = self.headers.get(ATTEMPT)
        valid = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if valid and isinstance(value, int) else 1


@dataclass(frozen=True)
class Undecodable:
    """The delivery is not a command this worker can hand to a handler."""

    error: Exception

    @property
    def reason(self) -> Reason:
        """The poison reason: the decoder's, or a schema violation for a validator's error."""
        if isinstance(self.error, InvalidMessage):
            return Reason(self.error.reason)
        return Reason.SCHEMA


@dataclass(frozen=True)
class TooEarly:
    """The delivery came over the hold limit before its due time."""

    seconds: float


@dataclass(frozen=True)
class Stopping:
    """The worker stopped before the handler could start."""


@dataclass(frozen=True)
class Cancelled:
    """The command was cancelled in the schedule store: its handler is not called."""


Handled = None
"""The result of a handler that returned."""

Result = Exception | Undecodable | TooEarly | Stopping | Cancelled | None
"""A handler's exception (``Skip``, ``Retry`` or any other), or one of the markers."""


@dataclass(frozen=True)
class Decision:
    """One delivery's settlement: the broker ``step``, the ``outcome`` it records, for
    :attr:`Step.COPY_THEN_ACK` the ``queue`` and ``headers`` of the copy, and for
    :attr:`Step.RESCHEDULE_THEN_ACK` the ``envelope`` to send (default: the delivery's)."""

    step: Step
    outcome: Outcome
    reason: str = ""
    queue: str = ""
    headers: HeadersType = field(default_factory=dict)
    envelope: Envelope | None = None  # what goes back through the ladder, if not the delivery


ACK_HANDLED = Decision(Step.ACK, Outcome.HANDLED)
"""The decision for a handler that returned (most of them: made once)."""
ACK_CANCELLED = Decision(Step.ACK, Outcome.CANCELLED, "cancelled in the schedule")


def decide(
    delivery: Delivery, result: Result, policy: RetryPolicy | None, now: datetime
) -> Decision:
    """What to do with ``delivery`` given its ``result``; ``policy`` is its handler's.

    A returned handler or ``Skip`` acks; a permanent error or the last attempt parks a
    copy in the poison queue; any other error puts a copy on the retry tier the policy
    picks (a ``Retry(after=...)`` longer than every tier goes through the delay ladder,
    due exactly then); an undecodable delivery is parked at once; a delivery too early goes back
    through the ladder; one caught by a stopping worker is left for redelivery; a cancelled
    one is acked.
    """
    match result:
        case None:
            return ACK_HANDLED
        case Skip():
            return Decision(Step.ACK, Outcome.SKIPPED, result.reason)
        case Stopping():
            return Decision(Step.LEAVE, Outcome.ABANDONED, "worker stopping")
        case Cancelled():
            return ACK_CANCELLED
        case TooEarly():
            return Decision(Step.RESCHEDULE_THEN_ACK, Outcome.RESCHEDULED)
        case Undecodable():
            return poison(delivery, result.reason, result.error, now)
    if policy is None or delivery.envelope is None:
        raise TypeError("a handler's result needs its envelope and retry policy")
    return _failed(delivery, delivery.envelope, result, policy, now)


def _failed(
    delivery: Delivery, envelope: Envelope, error: Exception, policy: RetryPolicy, now: datetime
) -> Decision:
    if policy.is_permanent(error):
        return poison(delivery, Reason.PERMANENT, error, now, safe_repr(error))
    if policy.exhausted(envelope.attempt):
        return poison(delivery, Reason.EXHAUSTED, error, now, safe_repr(error))
    after = error.after if isinstance(error, Retry) else None
    last_error = bounded(encodable_text(safe_repr(error)), LAST_ERROR_CHARS)
    copy = envelope.next_attempt(**{LAST_ERROR: last_error})
    if after is not None and after > policy.tiers[-1]:
        # Longer than any tier: the delay ladder waits exactly that long, no tier needed.
        later = dataclasses.replace(copy, due_at=now + after)
        return Decision(Step.RESCHEDULE_THEN_ACK, Outcome.RETRIED, safe_repr(error), envelope=later)
    tier = policy.tier_for(envelope.attempt, after)
    return Decision(
        Step.COPY_THEN_ACK,
        Outcome.RETRIED,
        safe_repr(error),
        retry_queue(delivery.queue, tier),
        copy.headers(),
    )


def poison(
    delivery: Delivery, reason: Reason, error: BaseException, now: datetime, note: str = ""
) -> Decision:
    """Park a copy of ``delivery`` in its poison queue under ``reason``, then ack."""
    headers = poison_headers(
        delivery.headers,
        reason=reason,
        origin_queue=delivery.queue,
        attempts=delivery.attempt,
        now=now,
        error=error,
    )
    return Decision(
        Step.COPY_THEN_ACK, Outcome.POISONED, note or reason, poison_queue(delivery.queue), headers
    )


def after_failed_publish(
    decision: Decision, delivery: Delivery, error: Exception, now: datetime
) -> Decision:
    """What to do when the copy or reschedule ``decision`` asked for was not confirmed.

    A retry tier that does not exist parks the delivery (rather than loop); a due time
    beyond the ladder's reach parks it as an invalid header; anything else gives the
    delivery back to the broker: never acked without its successor.
    """
    if decision.outcome is Outcome.RETRIED and isinstance(error, PublishReturned):
        return poison(delivery, Reason.RETRY_UNAVAILABLE, error, now)
    if decision.step is Step.RESCHEDULE_THEN_ACK and isinstance(error, DelayError):
        return poison(delivery, Reason.INVALID_HEADER, error, now)
    return Decision(Step.GIVE_BACK, Outcome.ABANDONED, safe_repr(error))
