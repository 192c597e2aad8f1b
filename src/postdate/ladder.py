"""The binary delay ladder as pure functions: routing keys, levels, and the due-time split.

A delay of ``s`` whole seconds is written as 28 bits, most significant first, one word
each, followed by the destination queue: ``0.0.(...).1.0.1.orders.expire``. The message
visits ladder level ``L`` (TTL ``2**L`` s) for every set bit ``L``, highest first.
"""

from __future__ import annotations

import functools
import math
from datetime import datetime, timedelta

from postdate.clock import require_aware
from postdate.errors import DelayError, InvalidArgument

LEVELS = 28
MAX_DELAY_SECONDS = 2**LEVELS - 1


@functools.lru_cache(maxsize=4096, typed=True)  # pure; a send builds one per publish
def routing_key(seconds: int, queue: str) -> str:
    """The ladder routing key for a delay of ``seconds`` whole seconds to ``queue``.

    Raises:
        DelayError: ``seconds`` is negative or above :data:`MAX_DELAY_SECONDS`.
    """
    check_seconds(seconds)
    bits = format(seconds, f"0{LEVELS}b")
    return ".".join(bits) + "." + queue


def decode_routing_key(key: str) -> tuple[int, str]:
    """Split a ladder routing key back into ``(seconds, queue)``.

    Raises:
        InvalidArgument: the key does not start with 28 bit words followed by a queue.
    """
    words = key.split(".")
    bits, queue_words = words[:LEVELS], words[LEVELS:]
    if len(bits) != LEVELS or not queue_words or any(bit not in ("0", "1") for bit in bits):
        raise InvalidArgument(f"not a ladder routing key: {key!r}")
    return int("".join(bits), 2), ".".join(queue_words)


def levels(seconds: int) -> list[int]:
    """The ladder levels a delay visits, in the order it visits them (highest first)."""
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
