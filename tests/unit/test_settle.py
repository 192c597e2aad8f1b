"""Settlement decisions: every branch of ``decide`` and ``after_failed_publish``, no broker."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pamqp.encode
import pytest
from aio_pika.abc import HeadersType
from pydantic import ValidationError

from postdate._clock import to_epoch_ms
from postdate._command import Command
from postdate._errors import (
    DelayError,
    InvalidMessage,
    PublishInterrupted,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
)
from postdate._outcomes import Outcome, Reason, Retry, Skip
from postdate.broker._topology import poison_queue, retry_queue
from postdate.consume._retry import RetryPolicy
from postdate.consume._settle import (
    LAST_ERROR,
    LAST_ERROR_CHARS,
    Decision,
    Delivery,
    Result,
    Step,
    Stopping,
    TooEarly,
    Undecodable,
    after_failed_publish,
    decide,
)
from postdate.parking._poison import (
    ATTEMPTS,
    ERROR_MESSAGE,
    ERROR_TYPE,
    FAILED_AT,
    ORIGIN_QUEUE,
    REASON,
)
from postdate.publish._envelope import ATTEMPT, BROKER_HEADERS, DUE, QUEUE, SCHEMA, Envelope

NOW = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
DUE_AT = datetime(2030, 1, 1, 11, 59, 0, tzinfo=UTC)
QUEUE_NAME = "billing.charge"
POISON = "billing.charge.poison"
TIERS = (timedelta(seconds=10), timedelta(minutes=1), timedelta(minutes=10))


class Charge(Command, queue=QUEUE_NAME):
    amount: int


class CardDeclined(Exception):
    """A permanent error for the test policy."""


class StolenCard(CardDeclined):
    """A subclass of a permanent error: permanent too."""


POLICY = RetryPolicy(max_attempts=4, tiers=TIERS, permanent=(CardDeclined,))

# What the broker may have written on a delivery: must never travel with a copy.
BROKER: HeadersType = {
    "x-death": [{"queue": QUEUE_NAME, "reason": "expired", "count": 1}],
    "x-first-death-exchange": "",
    "x-first-death-queue": "billing.charge.retry.10s",
    "x-first-death-reason": "expired",
    "x-last-death-exchange": "",
    "x-last-death-queue": "billing.charge.retry.10s",
    "x-last-death-reason": "expired",
    "x-delivery-count": 2,
    "CC": ["0.0.1.billing.charge"],
    "BCC": ["secret"],
}


def envelope(attempt: int = 1, **extra: str) -> Envelope:
    base = Envelope.for_command(Charge(amount=5), DUE_AT, message_id="m-1", correlation_id="c-1")
    return replace(base, attempt=attempt, extra_headers=dict(extra))


def delivery(attempt: int = 1, *, broker: bool = True) -> Delivery:
    """A decoded delivery of ``attempt`` whose headers carry the broker's own too."""
    env = envelope(attempt, **{"x-trace": "t-1"})
    headers: HeadersType = {**(BROKER if broker else {}), **env.headers()}
    return Delivery(QUEUE_NAME, headers, env)


def raised(error: Exception) -> Exception:
    """``error`` with a traceback, as a handler's exception arrives."""
    try:
        raise error
    except Exception as caught:
        return caught


def validator_error() -> ValidationError:
    try:
        Charge.model_validate_json(b'{"amount": "five"}')
    except ValidationError as exc:
        return exc
    raise AssertionError("the body should not validate")


def assert_no_broker_headers(decision: Decision) -> None:
    assert not BROKER_HEADERS & decision.headers.keys()


# --- results that settle without a copy -------------------------------------------------


@pytest.mark.parametrize("policy", [POLICY, None], ids=["with-policy", "no-policy"])
@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(None, Decision(Step.ACK, Outcome.HANDLED), id="handled"),
        pytest.param(
            Skip("already paid"),
            Decision(Step.ACK, Outcome.SKIPPED, "already paid"),
            id="skip-with-reason",
        ),
        pytest.param(Skip(), Decision(Step.ACK, Outcome.SKIPPED, ""), id="skip-without-reason"),
        pytest.param(
            Stopping(), Decision(Step.LEAVE, Outcome.ABANDONED, "worker stopping"), id="stopping"
        ),
        pytest.param(
            TooEarly(3.5),
            Decision(Step.RESCHEDULE_THEN_ACK, Outcome.RESCHEDULED),
            id="too-early",
        ),
    ],
)
def test_results_without_a_copy(
    result: Result, expected: Decision, policy: RetryPolicy | None
) -> None:
    decision = decide(delivery(2), result, policy, NOW)
    assert decision == expected
    assert decision.queue == ""
    assert decision.headers == {}


# --- undecodable deliveries ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason", "error_type"),
    [
        pytest.param(
            InvalidMessage(Reason.INVALID_JSON, "Expecting value"),
            Reason.INVALID_JSON,
            "InvalidMessage",
            id="invalid-json",
        ),
        pytest.param(
            InvalidMessage(Reason.SCHEMA, "amount: not an int"),
            Reason.SCHEMA,
            "InvalidMessage",
            id="schema",
        ),
        pytest.param(
            InvalidMessage(Reason.UNKNOWN_TYPE, "no handler for type 'Refund'"),
            Reason.UNKNOWN_TYPE,
            "InvalidMessage",
            id="unknown-type",
        ),
        pytest.param(
            InvalidMessage(Reason.MISSING_HEADER, "x-postdate-due header is missing"),
            Reason.MISSING_HEADER,
            "InvalidMessage",
            id="missing-header",
        ),
        pytest.param(
            InvalidMessage(Reason.INVALID_HEADER, "x-postdate-attempt=0 is below 1"),
            Reason.INVALID_HEADER,
            "InvalidMessage",
            id="invalid-header",
        ),
        pytest.param(
            ValueError("amount must be positive"),
            Reason.SCHEMA,
            "ValueError",
            id="validator-value-error",
        ),
        pytest.param(
            validator_error(), Reason.SCHEMA, "ValidationError", id="pydantic-validation-error"
        ),
        pytest.param(KeyError("currency"), Reason.SCHEMA, "KeyError", id="validator-key-error"),
    ],
)
def test_undecodable_is_parked_at_once(error: Exception, reason: Reason, error_type: str) -> None:
    headers: HeadersType = {**BROKER, ATTEMPT: 3, "x-trace": "t-9", "content": "kept"}
    decision = decide(Delivery(QUEUE_NAME, headers), Undecodable(error), None, NOW)
    assert decision.step is Step.COPY_THEN_ACK
    assert decision.outcome is Outcome.POISONED
    assert decision.reason == reason.value
    assert decision.queue == POISON == poison_queue(QUEUE_NAME)
    assert decision.headers[REASON] == reason.value
    assert decision.headers[ERROR_TYPE] == error_type
    assert decision.headers[ATTEMPTS] == 3
    assert decision.headers[FAILED_AT] == to_epoch_ms(NOW)
    assert decision.headers[ORIGIN_QUEUE] == QUEUE_NAME
    assert decision.headers["x-trace"] == "t-9"
    assert decision.headers["content"] == "kept"
    assert_no_broker_headers(decision)


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        pytest.param({}, 1, id="absent"),
        pytest.param({ATTEMPT: 1}, 1, id="one"),
        pytest.param({ATTEMPT: 7}, 7, id="seven"),
        pytest.param({ATTEMPT: 0}, 1, id="zero"),
        pytest.param({ATTEMPT: -3}, 1, id="negative"),
        pytest.param({ATTEMPT: True}, 1, id="bool-true"),
        pytest.param({ATTEMPT: False}, 1, id="bool-false"),
        pytest.param({ATTEMPT: "4"}, 1, id="string"),
        pytest.param({ATTEMPT: b"4"}, 1, id="bytes"),
        pytest.param({ATTEMPT: 4.0}, 1, id="float"),
        pytest.param({ATTEMPT: None}, 1, id="none"),
    ],
)
def test_attempt_of_an_undecodable_delivery_comes_from_its_header(
    headers: HeadersType, attempt: int
) -> None:
    undecodable = Delivery(QUEUE_NAME, headers)
    assert undecodable.attempt == attempt
    assert type(undecodable.attempt) is int  # True == 1, but is not an attempt
    decision = decide(undecodable, Undecodable(ValueError("bad")), None, NOW)
    assert decision.headers[ATTEMPTS] == attempt
    assert type(decision.headers[ATTEMPTS]) is int


def test_attempt_of_a_decoded_delivery_comes_from_its_envelope() -> None:
    decoded = Delivery(QUEUE_NAME, {ATTEMPT: 9}, envelope(2))
    assert decoded.attempt == 2


# --- handler errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "error", "reason", "error_type"),
    [
        pytest.param(1, CardDeclined("no funds"), Reason.PERMANENT, "CardDeclined", id="permanent"),
        pytest.param(
            2, StolenCard("flagged"), Reason.PERMANENT, "StolenCard", id="permanent-subclass"
        ),
        pytest.param(
            4, CardDeclined("no funds"), Reason.PERMANENT, "CardDeclined", id="permanent-on-last"
        ),
        pytest.param(4, RuntimeError("db down"), Reason.EXHAUSTED, "RuntimeError", id="last"),
        pytest.param(9, RuntimeError("db down"), Reason.EXHAUSTED, "RuntimeError", id="beyond"),
        pytest.param(
            4, Retry("later", after=5), Reason.EXHAUSTED, "Retry", id="retry-on-last-attempt"
        ),
    ],
)
def test_handler_error_parked_in_poison(
    attempt: int, error: Exception, reason: Reason, error_type: str
) -> None:
    error = raised(error)
    decision = decide(delivery(attempt), error, POLICY, NOW)
    assert decision.step is Step.COPY_THEN_ACK
    assert decision.outcome is Outcome.POISONED
    assert decision.reason == repr(error)
    assert decision.queue == POISON
    assert decision.headers[REASON] == reason.value
    assert decision.headers[ERROR_TYPE] == error_type
    assert decision.headers[ERROR_MESSAGE] == str(error)
    assert decision.headers[ATTEMPTS] == attempt
    assert decision.headers[ATTEMPT] == attempt  # the delivery's own headers are kept
    assert decision.headers["x-trace"] == "t-1"
    assert decision.headers[ORIGIN_QUEUE] == QUEUE_NAME
    assert decision.headers[FAILED_AT] == to_epoch_ms(NOW)
    assert_no_broker_headers(decision)


@pytest.mark.parametrize(
    ("attempt", "error", "tier"),
    [
        pytest.param(1, RuntimeError("db down"), TIERS[0], id="first-attempt-first-tier"),
        pytest.param(2, RuntimeError("db down"), TIERS[1], id="second-attempt-second-tier"),
        pytest.param(3, RuntimeError("db down"), TIERS[2], id="third-attempt-last-tier"),
        pytest.param(1, Retry("busy"), TIERS[0], id="retry-without-after"),
        pytest.param(1, Retry("busy", after=30), TIERS[1], id="after-30s-picks-1m"),
        pytest.param(
            3, Retry("busy", after=timedelta(seconds=1)), TIERS[0], id="after-beats-attempt"
        ),
        pytest.param(1, Retry("busy", after=60), TIERS[1], id="after-equal-to-a-tier"),
        pytest.param(2, Exception("plain"), TIERS[1], id="plain-exception"),
    ],
)
def test_ordinary_error_copies_to_a_retry_tier(
    attempt: int, error: Exception, tier: timedelta
) -> None:
    source = delivery(attempt)
    decision = decide(source, error, POLICY, NOW)
    assert decision.step is Step.COPY_THEN_ACK
    assert decision.outcome is Outcome.RETRIED
    assert decision.reason == repr(error)
    assert decision.queue == retry_queue(QUEUE_NAME, tier)
    assert decision.queue.startswith(f"{QUEUE_NAME}.retry.")
    assert decision.headers == {
        "x-trace": "t-1",
        LAST_ERROR: repr(error),
        DUE: to_epoch_ms(DUE_AT),
        ATTEMPT: attempt + 1,
        SCHEMA: 1,
        QUEUE: QUEUE_NAME,
    }
    assert source.envelope is not None
    assert source.envelope.attempt == attempt  # the delivery's envelope is left alone


@pytest.mark.parametrize("after", [timedelta(hours=2), timedelta(days=1)], ids=["2h", "1d"])
def test_retry_after_beyond_the_last_tier_goes_through_the_ladder_due_exactly_then(
    after: timedelta,
) -> None:
    assert after > TIERS[-1]
    source = delivery(1)
    decision = decide(source, Retry("busy", after=after), POLICY, NOW)
    assert decision.step is Step.RESCHEDULE_THEN_ACK
    assert decision.outcome is Outcome.RETRIED
    assert decision.envelope is not None
    assert decision.envelope.due_at == NOW + after  # never silently shortened to a tier
    assert decision.envelope.attempt == 2
    assert decision.envelope.headers()[LAST_ERROR] == repr(Retry("busy", after=after))
    assert source.envelope is not None
    assert decision.envelope.message_id == source.envelope.message_id


def test_retry_copy_replaces_the_previous_last_error() -> None:
    env = envelope(2, **{LAST_ERROR: "RuntimeError('first')"})
    decision = decide(Delivery(QUEUE_NAME, env.headers(), env), KeyError("second"), POLICY, NOW)
    assert decision.headers[LAST_ERROR] == "KeyError('second')"


def test_retry_copy_bounds_the_last_error() -> None:
    error = RuntimeError("x" * 5_000)
    decision = decide(delivery(1), error, POLICY, NOW)
    last = decision.headers[LAST_ERROR]
    assert isinstance(last, str)
    assert len(last) <= LAST_ERROR_CHARS
    assert last.startswith("RuntimeError('xxx")
    assert last.endswith("...[truncated]")
    assert decision.reason == repr(error)  # the logged reason is not cut


class Opaque(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_retry_copy_of_an_error_with_a_failing_repr() -> None:
    decision = decide(delivery(1), Opaque(), POLICY, NOW)
    assert decision.outcome is Outcome.RETRIED
    assert decision.reason == "<Opaque with a failing __repr__>"
    assert decision.headers[LAST_ERROR] == "<Opaque with a failing __repr__>"


@pytest.mark.parametrize(
    ("source", "result"),
    [
        pytest.param(delivery(1), RuntimeError("boom"), id="retry"),
        pytest.param(delivery(4), RuntimeError("boom"), id="exhausted"),
        pytest.param(delivery(1), CardDeclined("no"), id="permanent"),
        pytest.param(
            Delivery(QUEUE_NAME, {**BROKER, ATTEMPT: 2}),
            Undecodable(ValueError("bad")),
            id="undecodable",
        ),
    ],
)
def test_copies_never_carry_broker_headers(source: Delivery, result: Result) -> None:
    decision = decide(source, result, POLICY, NOW)
    assert decision.step is Step.COPY_THEN_ACK
    assert decision.headers
    assert_no_broker_headers(decision)


class NotUtf8(Exception):
    """An error whose text is not UTF-8 (a lone surrogate, as ``os.fsdecode`` may give)."""

    def __str__(self) -> str:
        return "no file \udcff"

    def __repr__(self) -> str:
        return "NotUtf8('\udcff')"


# Header values pamqp decodes but cannot encode again as they are.
ODD: HeadersType = {
    "x-odd": b"\xff\xfe",  # a long string of another client that is not UTF-8
    "x-table": {"k": [b"\x80"]},
    "x-big": Decimal(3_000_000_000),
}


@pytest.mark.parametrize(
    ("source", "result"),
    [
        pytest.param(delivery(1), NotUtf8(), id="retry-error-text-not-utf8"),
        pytest.param(delivery(4), raised(NotUtf8()), id="exhausted-error-text-not-utf8"),
        pytest.param(delivery(1), CardDeclined("no \udcff"), id="permanent-error-not-utf8"),
        pytest.param(
            Delivery(QUEUE_NAME, {**BROKER, **ODD, ATTEMPT: 2}),
            Undecodable(ValueError("bad")),
            id="undecodable-odd-headers",
        ),
        pytest.param(
            Delivery(QUEUE_NAME, dict(ODD)),
            Undecodable(InvalidMessage(Reason.UNKNOWN_TYPE, "no handler for type 'X'")),
            id="unknown-type-odd-headers",
        ),
    ],
)
def test_every_copy_can_be_published_whatever_the_delivery_carried(
    source: Delivery, result: Result
) -> None:
    decision = decide(source, result, POLICY, NOW)
    assert decision.step is Step.COPY_THEN_ACK
    pamqp.encode.field_table(decision.headers)  # what the publish does: must not raise


@pytest.mark.parametrize(
    ("source", "policy"),
    [
        pytest.param(delivery(1), None, id="no-policy"),
        pytest.param(Delivery(QUEUE_NAME, {ATTEMPT: 1}), POLICY, id="no-envelope"),
        pytest.param(Delivery(QUEUE_NAME, {}), None, id="neither"),
    ],
)
def test_handler_error_needs_envelope_and_policy(
    source: Delivery, policy: RetryPolicy | None
) -> None:
    with pytest.raises(TypeError, match="envelope and retry policy"):
        decide(source, RuntimeError("boom"), policy, NOW)


# --- after a failed publish ----------------------------------------------------------------

RETURNED = PublishReturned("", "billing.charge.retry.10s", "NO_ROUTE")


def retry_decision() -> Decision:
    return decide(delivery(2), RuntimeError("db down"), POLICY, NOW)


def poison_decision() -> Decision:
    return decide(delivery(4), RuntimeError("db down"), POLICY, NOW)


def reschedule_decision() -> Decision:
    return decide(delivery(2), TooEarly(30.0), POLICY, NOW)


@pytest.mark.parametrize(
    ("decision", "error", "reason"),
    [
        pytest.param(retry_decision(), RETURNED, Reason.RETRY_UNAVAILABLE, id="retry-returned"),
        pytest.param(
            reschedule_decision(),
            DelayError("delay above the ladder's maximum"),
            Reason.INVALID_HEADER,
            id="reschedule-delay-error",
        ),
    ],
)
def test_failed_publish_parks_the_delivery(
    decision: Decision, error: Exception, reason: Reason
) -> None:
    later = NOW + timedelta(seconds=3)
    fallback = after_failed_publish(decision, delivery(2), error, later)
    assert fallback.step is Step.COPY_THEN_ACK
    assert fallback.outcome is Outcome.POISONED
    assert fallback.reason == reason.value
    assert fallback.queue == POISON
    assert fallback.headers[REASON] == reason.value
    assert fallback.headers[ERROR_TYPE] == type(error).__qualname__
    assert fallback.headers[ATTEMPTS] == 2
    assert fallback.headers[FAILED_AT] == to_epoch_ms(later)
    assert_no_broker_headers(fallback)


@pytest.mark.parametrize(
    ("decision", "error"),
    [
        pytest.param(retry_decision(), PublishTimeout("no confirm"), id="retry-timeout"),
        pytest.param(retry_decision(), PublishNacked("queue full"), id="retry-nacked"),
        pytest.param(retry_decision(), PublishInterrupted("lost"), id="retry-interrupted"),
        pytest.param(retry_decision(), DelayError("odd"), id="retry-delay-error"),
        pytest.param(poison_decision(), RETURNED, id="poison-returned"),
        pytest.param(poison_decision(), PublishTimeout("no confirm"), id="poison-timeout"),
        pytest.param(poison_decision(), PublishNacked("queue full"), id="poison-nacked"),
        pytest.param(poison_decision(), DelayError("odd"), id="poison-delay-error"),
        pytest.param(reschedule_decision(), RETURNED, id="reschedule-returned"),
        pytest.param(reschedule_decision(), PublishTimeout("no confirm"), id="reschedule-timeout"),
        pytest.param(reschedule_decision(), PublishNacked("full"), id="reschedule-nacked"),
        pytest.param(reschedule_decision(), OSError("socket"), id="reschedule-os-error"),
    ],
)
def test_failed_publish_gives_the_delivery_back(decision: Decision, error: Exception) -> None:
    fallback = after_failed_publish(decision, delivery(2), error, NOW)
    assert fallback == Decision(Step.GIVE_BACK, Outcome.ABANDONED, repr(error))


def test_failed_fallback_gives_back_instead_of_looping() -> None:
    parked = after_failed_publish(retry_decision(), delivery(2), RETURNED, NOW)
    assert parked.outcome is Outcome.POISONED
    again = after_failed_publish(parked, delivery(2), RETURNED, NOW)
    assert again.step is Step.GIVE_BACK
    assert again.outcome is Outcome.ABANDONED
