"""What a handler can say about a message, and the outcomes the worker records."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum


class Outcome(StrEnum):
    HANDLED = "handled"  # handler returned: acked
    SKIPPED = "skipped"  # handler raised Skip (exit early): acked
    RETRIED = "retried"  # copy confirmed on a retry tier, then acked
    POISONED = "poisoned"  # copy confirmed on the poison queue, then acked
    RESCHEDULED = "rescheduled"  # arrived over a second early: sent back through the ladder
    ABANDONED = "abandoned"  # not acked (shutdown or lost channel): the broker redelivers


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
