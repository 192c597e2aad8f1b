"""The operator's poison tools: list, show, replay and purge parked messages, by filter.

Every run goes through :mod:`postdate.parking._parked`: it handles the messages parked when it
started (never one parked again while it ran), moves are confirm-then-ack, and what it
reads is given back when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from postdate._errors import InvalidArgument, QueueNotFound
from postdate.broker._topology import poison_queue
from postdate.parking._parked import (
    Copy,
    Progress,
    Tally,
    delete_parked,
    move_parked,
    no_progress,
    read_parked,
)
from postdate.parking._poison import PoisonEntry, replay_headers
from postdate.publish._envelope import copy_properties
from postdate.publish._publisher import Publisher

POISON_SUFFIX = poison_queue("")


@dataclass(frozen=True)
class PoisonFilter:
    """Which parked messages a run handles: every given criterion must hold (an empty
    set or None means any). Ages count back from now to when the message was parked."""

    message_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    error_types: frozenset[str] = frozenset()
    older_than: timedelta | None = None
    newer_than: timedelta | None = None

    def matches(self, entry: PoisonEntry, now: datetime) -> bool:
        """Whether ``entry`` passes every criterion."""
        return (
            _within(self.message_ids, entry.message_id)
            and _within(self.types, entry.type)
            and _within(self.reasons, entry.reason)
            and _within(self.error_types, entry.error_type)
            and self._age_matches(entry, now)
        )

    def _age_matches(self, entry: PoisonEntry, now: datetime) -> bool:
        if self.older_than is None and self.newer_than is None:
            return True
        if entry.failed_at is None:
            return False
        age = now - entry.failed_at
        older = self.older_than is None or age >= self.older_than
        newer = self.newer_than is None or age <= self.newer_than
        return older and newer


def _within(wanted: frozenset[str], value: str | None) -> bool:
    return not wanted or (value is not None and value in wanted)


ANY = PoisonFilter()


@dataclass(frozen=True)
class Listing:
    """A read of a poison queue: its depth, how many were read, and those that matched."""

    queue: str
    parked: int
    read: int
    entries: list[PoisonEntry]


def parking_of(queue: str) -> str:
    """The poison queue of command queue ``queue``.

    Raises:
        InvalidArgument: ``queue`` is itself a poison queue.
    """
    if queue.endswith(POISON_SUFFIX):
        command_queue = queue.removesuffix(POISON_SUFFIX)
        raise InvalidArgument(
            f"{queue!r} is a poison queue: give its command queue {command_queue!r}"
        )
    return poison_queue(queue)


def _not_found(queue: str) -> QueueNotFound:
    return QueueNotFound(
        f"no poison queue {poison_queue(queue)!r}: is {queue!r} a command queue that a "
        "worker or `postdate topology declare MODULE:APP` has declared?"
    )


async def list_poison(
    connection: AbstractConnection,
    queue: str,
    where: PoisonFilter = ANY,
    progress: Progress = no_progress,
) -> Listing:
    """Read the parked messages of command queue ``queue``; they stay parked.

    Raises:
        InvalidArgument: ``queue`` is a poison queue, not a command queue.
        QueueNotFound: ``queue`` has no poison queue.
        ReadLockBusy: another run on it did not end in time.
    """
    parking = parking_of(queue)
    try:
        messages, parked = await read_parked(connection, parking, progress)
    except QueueNotFound:
        raise _not_found(queue) from None
    now = datetime.now(UTC)
    entries = [PoisonEntry.from_message(message, queue) for message in messages]
    return Listing(
        parking, parked, len(messages), [entry for entry in entries if where.matches(entry, now)]
    )


async def replay_poison(
    connection: AbstractConnection,
    publisher: Publisher,
    queue: str,
    where: PoisonFilter = ANY,
    progress: Progress = no_progress,
) -> Tally:
    """Send the matching parked messages back to their queue as attempt 1.

    Each copy is confirmed before its parked message is removed; ``Tally.error`` holds
    the first copy that was not (the run stopped there; the rest stay parked).

    Raises:
        InvalidArgument: ``queue`` is a poison queue, not a command queue.
        QueueNotFound: ``queue`` has no poison queue.
        ReadLockBusy: another run on it did not end in time.
    """
    now = datetime.now(UTC)

    async def copy_of(message: AbstractIncomingMessage) -> Copy | None:
        entry = PoisonEntry.from_message(message, queue)
        if not where.matches(entry, now):
            return None
        properties = copy_properties(message, replay_headers(message.headers))
        return Copy(message.body, properties, entry.origin_queue)

    try:
        return await move_parked(connection, parking_of(queue), publisher, copy_of, progress)
    except QueueNotFound:
        raise _not_found(queue) from None


async def purge_poison(
    connection: AbstractConnection,
    queue: str,
    where: PoisonFilter = ANY,
    progress: Progress = no_progress,
) -> Tally:
    """Delete the matching parked messages of ``queue`` for good.

    Raises:
        InvalidArgument: ``queue`` is a poison queue, not a command queue.
        QueueNotFound: ``queue`` has no poison queue.
        ReadLockBusy: another run on it did not end in time.
    """
    now = datetime.now(UTC)

    def matches(message: AbstractIncomingMessage) -> bool:
        return where.matches(PoisonEntry.from_message(message, queue), now)

    try:
        return await delete_parked(connection, parking_of(queue), matches, progress)
    except QueueNotFound:
        raise _not_found(queue) from None
