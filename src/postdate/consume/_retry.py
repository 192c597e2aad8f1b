"""Retry policy per handler: tiers, attempts, and which errors are permanent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from postdate._errors import InvalidArgument
from postdate.broker._topology import DEFAULT_RETRY_TIERS, format_duration


@dataclass(frozen=True)
class RetryPolicy:
    """How a handler's failures are retried.

    ``max_attempts`` counts the first delivery: 5 means 1 try + 4 retries. Attempt ``n``'s
    failure waits on tier ``n-1`` (the last tier repeats), unless the handler raised
    ``Retry(after=...)``, which picks the shortest tier that is at least that long.
    Exceptions of a ``permanent`` type go to the poison queue at once.

    Raises:
        InvalidArgument: ``max_attempts`` below 1, no tiers, or tiers that are not
            distinct positive whole seconds in increasing order.
    """

    max_attempts: int = 5
    tiers: tuple[timedelta, ...] = DEFAULT_RETRY_TIERS
    permanent: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not self.tiers:
            raise InvalidArgument("a retry policy needs at least one tier")
        for tier in self.tiers:
            format_duration(tier)  # raises InvalidArgument for non-positive or fractional tiers
        if list(self.tiers) != sorted(set(self.tiers)):
            raise InvalidArgument("retry tiers must be distinct and in increasing order")

    def tier_for(self, attempt: int, after: timedelta | None = None) -> timedelta:
        """The tier that holds the copy after attempt number ``attempt`` failed."""
        if after is not None:
            return next((tier for tier in self.tiers if tier >= after), self.tiers[-1])
        return self.tiers[min(attempt - 1, len(self.tiers) - 1)]

    def exhausted(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` was the last one allowed."""
        return attempt >= self.max_attempts

    def is_permanent(self, error: BaseException) -> bool:
        """Whether ``error`` is of a type that no retry can fix."""
        return isinstance(error, self.permanent)
