"""The binary delay ladder as pure functions: hop keys, levels, and the due-time split.

A delay of ``s`` whole seconds visits ladder level ``L`` (TTL ``2**L`` s) for every set
bit ``L`` of ``s``, highest first, then the deliver exchange. The message carries one
literal key per hop in its CC header (:func:`hop_keys`): ``~3>0`` moves it from level 3
to level 0, ``~0>`` from level 0 to the deliver exchange, and ``~>orders.expire`` from
there into its command queue. Each key is matched once, exactly, by the exchange it is
meant for: short literal keys keep RabbitMQ's dead-letter workers from spending their
time matching keys against wildcard patterns.
"""

from __future__ import annotations

import functools
import math
from datetime import datetime, timedelta

from postdate._clock import require_aware
from postdate._errors import DelayError

LEVELS = 28
MAX_DELAY_SECONDS = 2**LEVELS - 1


@functools.lru_cache(maxsize=4096, typed=True)  # pure; a send builds one per publish
def hop_keys(seconds: int, queue: str) -> tuple[str, ...]:
    """The CC keys of a message the ladder holds ``seconds`` whole seconds for ``queue``:
    one per hop between the levels it visits, then :func:`deliver_key`.

    Raises:
        DelayError: ``seconds`` is negative or above :data:`MAX_DELAY_SECONDS`.
    """
    visited = levels(seconds)
    lowers: list[int | None] = [*visited[1:], None] if visited else []
    hops = [hop_key(level, lower) for level, lower in zip(visited, lowers, strict=True)]
    return (*hops, deliver_key(queue))


def hop_key(level: int, lower: int | None) -> str:
    """The key that ladder level ``level``'s exchange routes to level ``lower``, or to the
    deliver exchange when ``lower`` is None. Never a command queue's name: ``~`` and ``>``
    are not allowed in those."""
    return f"~{level}>{'' if lower is None else lower}"


def deliver_key(queue: str) -> str:
    """The key the deliver exchange routes into command queue ``queue``."""
    return f"~>{queue}"


def levels(seconds: int) -> list[int]:
    """The ladder levels a delay visits, in the order it visits them (highest first).

    Raises:
        DelayError: ``seconds`` is negative or above :data:`MAX_DELAY_SECONDS`.
    """
    check_seconds(seconds)
    return [level for level in range(LEVELS - 1, -1, -1) if seconds >> level & 1]


def ladder_seconds(due: datetime, now: datetime) -> int:
    """Whole seconds the ladder should hold a message due at ``due``, seen at ``now``.

    Rounded down, so the ladder never delivers early; the consumer holds the sub-second
    remainder. A due time in the past gives 0 (deliver at once).

    Raises:
        DelayError: ``due`` or ``now`` is naive, or the delay is above the ladder's maximum.
    """
    require_aware(due, "due time")
    require_aware(now, "now")
    remaining = (due - now).total_seconds()
    seconds = max(0, math.floor(remaining))
    check_seconds(seconds)
    return seconds


def check_seconds(seconds: int) -> None:
    """Raises DelayError unless ``0 <= seconds <= MAX_DELAY_SECONDS``."""
    if seconds < 0:
        raise DelayError(f"delay {seconds} s is negative")
    if seconds > MAX_DELAY_SECONDS:
        longest = timedelta(seconds=MAX_DELAY_SECONDS)
        raise DelayError(
            f"delay {seconds} s is above the ladder's maximum {MAX_DELAY_SECONDS} s ({longest})"
        )
