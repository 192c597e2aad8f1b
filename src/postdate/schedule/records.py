"""What the schedule's queries return: plain frozen values, no database objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

OVERDUE_GRACE = timedelta(seconds=1)
"""How long after its due time a command not yet published counts as overdue: a running
relay publishes a row within its poll interval (0.5 s) of the commit, well before it is
due, so one still unpublished this late after its due time says no relay is running."""


class CancelStatus(StrEnum):
    """What a cancel achieved for one command."""

    CANCELLED = "cancelled"  # it will never be handed to its handler
    ALREADY_CANCELLED = "already-cancelled"
    TOO_LATE = "too-late"  # it was handled (or skipped, poisoned), or its handler was running


@dataclass(frozen=True)
class CancelResult:
    """One command's cancel: its ``status``, ``detail`` for a late one (what it did, or
    which worker was running it), and the live workers that did not confirm in time
    (``unconfirmed``: they have not started it, and will not once they see the cancel)."""

    message_id: str
    status: CancelStatus
    detail: str = ""
    unconfirmed: tuple[str, ...] = ()

    @property
    def effective(self) -> bool:
        """Whether the command will not be handled (cancelled now or before)."""
        return self.status is not CancelStatus.TOO_LATE


@dataclass(frozen=True)
class Scheduled:
    """A command in the schedule that has no final outcome yet (upcoming)."""

    message_id: str
    type: str
    queue: str
    correlation_id: str | None
    due_at: datetime
    scheduled_at: datetime
    published_at: datetime | None
    attempts: int  # deliveries recorded so far (retries)

    @property
    def overdue(self) -> bool:
        """Whether it is overdue now (see :meth:`overdue_at`)."""
        return self.overdue_at(datetime.now(UTC))

    def overdue_at(self, now: datetime) -> bool:
        """Whether at ``now`` it was due more than :data:`OVERDUE_GRACE` ago and not
        published yet (is a relay running?)."""
        return self.published_at is None and self.due_at < now - OVERDUE_GRACE


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded outcome of one delivery of a command."""

    message_id: str
    type: str
    queue: str
    correlation_id: str | None
    attempt: int
    outcome: str
    detail: str
    at: datetime
    worker: str


@dataclass(frozen=True)
class Timeline:
    """Everything known of one command: when it was scheduled, due and published (when it
    went through the outbox), cancelled and why (e.g. ``rescheduled as <id>``), and every
    outcome recorded for it, oldest first."""

    message_id: str
    type: str
    correlation_id: str | None
    due_at: datetime | None
    scheduled_at: datetime | None
    published_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str
    outcomes: tuple[HistoryEntry, ...]

    @property
    def final(self) -> HistoryEntry | None:
        """The outcome that ended it (handled, skipped, poisoned, cancelled), if any."""
        for entry in reversed(self.outcomes):
            if entry.outcome in FINAL_OUTCOMES:
                return entry
        return None


@dataclass(frozen=True)
class OutcomeCount:
    """How many commands of ``type`` ended in ``outcome`` (or, for ``"scheduled"``, fall
    due) in the bucket starting at ``start``."""

    start: datetime
    type: str
    outcome: str
    count: int


@dataclass(frozen=True)
class Trimmed:
    """What one :meth:`ScheduleStore.trim` deleted."""

    history: int
    outbox: int
    cancels: int


FINAL_OUTCOMES = frozenset({"handled", "skipped", "poisoned", "cancelled"})
"""Outcomes after which a command is done; ``retried`` is not one."""
