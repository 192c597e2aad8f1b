"""What a handler can say about a message, and the outcomes the worker records."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum


class Outcome(StrEnum):
    """What became of one delivery; logged and counted per queue and command type."""

    HANDLED = "handled"  # handler returned: acked
    SKIPPED = "skipped"  # handler raised Skip (exit early): acked
    RETRIED = "retried"  # copy confirmed on a retry tier, then acked
    POISONED = "poisoned"  # copy confirmed on the poison queue, then acked
    RESCHEDULED = "rescheduled"  # arrived over a second early: sent back through the ladder
    ABANDONED = "abandoned"  # not acked (shutdown or lost channel): the broker redelivers
    CANCELLED = "cancelled"  # cancelled in the schedule store: acked, the handler not called


class Reason(StrEnum):
    """Why a message was parked in the poison queue (the value of its reason header)."""

    EXHAUSTED = "attempts-exhausted"
    PERMANENT = "permanent-error"
    INVALID_JSON = "invalid-json"
    SCHEMA = "schema-violation"
    UNKNOWN_TYPE = "unknown-type"
    MISSING_HEADER = "missing-header"
    INVALID_HEADER = "invalid-header"  # includes a due time beyond the ladder's reach
    RETRY_UNAVAILABLE = "retry-unavailable"  # the retry tier queue does not exist
    DELIVERY_LIMIT = "delivery-limit"  # written by the broker: see x-death


class Skip(Exception):
    """Raise from a handler to exit early: nothing to do; the message is acked."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(reason)


class Retry(Exception):
    """Raise from a handler to ask for a later attempt, at least ``after`` from now."""

    def __init__(self, reason: str = "", *, after: timedelta | float | None = None) -> None:
        self.reason = reason
        self.after = timedelta(seconds=after) if isinstance(after, int | float) else after
        super().__init__(reason)
