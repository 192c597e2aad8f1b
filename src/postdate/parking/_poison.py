"""The poison queue: what a parked message carries (operator tools:
:mod:`postdate.parking._triage`)."""

from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, HeadersType

from postdate._clock import from_epoch_ms, to_epoch_ms
from postdate._outcomes import Reason
from postdate.publish._envelope import (
    ATTEMPT,
    HEADER_PREFIX,
    QUEUE,
    encodable_text,
    without_broker_headers,
)

REASON = "x-postdate-poison-reason"
ERROR_TYPE = "x-postdate-error-type"
ERROR_MESSAGE = "x-postdate-error-message"
TRACEBACK = "x-postdate-traceback"
ATTEMPTS = "x-postdate-attempts"
FAILED_AT = "x-postdate-failed-at"  # epoch milliseconds
CONSUMER = "x-postdate-consumer"  # host:pid
ORIGIN_QUEUE = "x-postdate-origin-queue"
POISON_HEADERS = (REASON, ERROR_TYPE, ERROR_MESSAGE, TRACEBACK, ATTEMPTS, FAILED_AT, CONSUMER)

MAX_MESSAGE_CHARS = 1_000
MAX_TRACEBACK_CHARS = 4_000


def safe_repr(error: BaseException) -> str:
    """``repr(error)``, or a stand-in when the error's own ``__repr__`` fails."""
    try:
        return repr(error)
    except Exception:
        return f"<{type(error).__qualname__} with a failing __repr__>"


def safe_str(error: BaseException) -> str:
    """``str(error)``, or its :func:`safe_repr` when the error's own ``__str__`` fails."""
    try:
        return str(error)
    except Exception:
        return safe_repr(error)


def consumer_id() -> str:
    """``host:pid`` of this process, as poison copies name the consumer that parked them."""
    return f"{socket.gethostname()}:{os.getpid()}"


TRUNCATED = "...[truncated]"


def bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked when cut (if the mark fits)."""
    if len(text) <= limit:
        return text
    if limit <= len(TRUNCATED):
        return text[: max(0, limit)]
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def poison_headers(
    headers: HeadersType | None,
    *,
    reason: Reason,
    origin_queue: str,
    attempts: int,
    now: datetime,
    error: BaseException | None = None,
) -> HeadersType:
    """The headers of a poison copy: the delivery's own (broker headers dropped, any value
    made one a copy can carry), plus the reason, the error, the attempts, when and where
    it failed."""
    parked = without_broker_headers(headers)
    parked.update(
        {
            REASON: reason.value,
            ERROR_TYPE: encodable_text(type(error).__qualname__) if error is not None else "",
            ERROR_MESSAGE: _bounded_text(
                safe_str(error) if error is not None else "", MAX_MESSAGE_CHARS
            ),
            TRACEBACK: _bounded_text(_traceback_of(error), MAX_TRACEBACK_CHARS),
            ATTEMPTS: attempts,
            FAILED_AT: to_epoch_ms(now),
            CONSUMER: consumer_id(),
            ORIGIN_QUEUE: origin_queue,
        }
    )
    return parked


def _bounded_text(text: str, limit: int) -> str:
    """``text`` as a header can carry it (see :func:`~postdate.publish._envelope.encodable_text`),
    :func:`bounded` to ``limit`` characters."""
    return bounded(encodable_text(text), limit)


def _traceback_of(error: BaseException | None) -> str:
    if error is None or error.__traceback__ is None:
        return ""
    try:
        return "".join(traceback.format_exception(error))
    except Exception:
        return safe_repr(error)


@dataclass(frozen=True)
class PoisonEntry:
    """One parked message as an operator sees it."""

    message_id: str | None
    type: str | None
    reason: str
    error_type: str
    error_message: str
    attempts: int | None
    failed_at: datetime | None
    consumer: str
    origin_queue: str
    body: bytes
    traceback: str

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage, queue: str) -> PoisonEntry:
        """What ``message``, read from the poison queue of ``queue``, says about itself."""
        headers = dict(message.headers or {})
        death = _first_death(headers)
        failed_at = headers.get(FAILED_AT)
        return cls(
            message_id=message.message_id,
            type=message.type,
            reason=str(headers.get(REASON) or _death_reason(death)),
            error_type=str(headers.get(ERROR_TYPE, "")),
            error_message=str(headers.get(ERROR_MESSAGE, "")),
            attempts=_int_or_none(headers.get(ATTEMPTS, headers.get(ATTEMPT))),
            failed_at=from_epoch_ms(failed_at) if isinstance(failed_at, int) else None,
            consumer=str(headers.get(CONSUMER, "")),
            origin_queue=str(
                headers.get(ORIGIN_QUEUE) or headers.get(QUEUE) or death.get("queue") or queue
            ),
            body=message.body,
            traceback=str(headers.get(TRACEBACK, "")),
        )


def _first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return {}


def _death_reason(death: dict[str, Any]) -> str:
    return Reason.DELIVERY_LIMIT if death.get("reason") == "delivery_limit" else "unknown"


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def replay_headers(headers: HeadersType | None) -> HeadersType:
    """The headers of a replayed copy: poison and broker headers removed, attempt 1."""
    replayed = {
        key: value
        for key, value in without_broker_headers(headers).items()
        if key not in POISON_HEADERS and key != ORIGIN_QUEUE
    }
    if any(key.startswith(HEADER_PREFIX) for key in replayed):
        replayed[ATTEMPT] = 1
    return replayed
