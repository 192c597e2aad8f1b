"""Time as postdate handles it: aware datetimes only, and epoch milliseconds on the wire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from postdate._errors import DelayError


def require_aware(moment: datetime, name: str) -> datetime:
    """Return ``moment`` if it carries a timezone.

    Raises:
        DelayError: ``moment`` is naive; the message names it as ``name``.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise DelayError(f"{name} {moment.isoformat()} is naive: give it a timezone, e.g. UTC")
    return moment


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_epoch_ms(moment: datetime) -> int:
    """``moment`` as whole milliseconds since the Unix epoch, rounded up: a due time
    carried in milliseconds is never before the exact one (exact integer arithmetic)."""
    microseconds = (moment - EPOCH) // _MICROSECOND
    return -(-microseconds // 1000)


def from_epoch_ms(millis: int) -> datetime:
    """The aware UTC datetime of ``millis`` milliseconds since the Unix epoch."""
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


async def sleep_until(moment: datetime) -> None:
    """Return once the wall clock has reached ``moment``, never before.

    ``asyncio.sleep`` counts on the monotonic clock, and the event loop runs a timer up
    to its clock resolution early: sleep again for whatever is left, however little.
    """
    while (left := (moment - datetime.now(UTC)).total_seconds()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(left)
