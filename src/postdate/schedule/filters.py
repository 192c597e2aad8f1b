"""Row filters shared by the schedule's questions (what is coming, what happened)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table
from sqlalchemy.sql.elements import ColumnElement

from postdate._clock import require_aware, to_epoch_ms


def row_filters(
    table: Table,
    moment_ms: ColumnElement[int],
    *,
    after: datetime | None = None,
    before: datetime | None = None,
    correlation_id: str | None = None,
    command_type: str | None = None,
    queue: str | None = None,
) -> list[ColumnElement[bool]]:
    """Conditions on ``table`` (the outbox, or one with the same ``correlation_id``,
    ``type`` and ``queue`` columns): ``moment_ms`` in ``[after, before)``, and the given
    values; None means no condition.

    Raises:
        DelayError: ``after`` or ``before`` is naive.
    """
    conditions: list[ColumnElement[bool]] = []
    if after is not None:
        conditions.append(moment_ms >= epoch_ms(after, "after"))
    if before is not None:
        conditions.append(moment_ms < epoch_ms(before, "before"))
    for column, value in (
        ("correlation_id", correlation_id),
        ("type", command_type),
        ("queue", queue),
    ):
        if value is not None:
            conditions.append(table.c[column] == value)
    return conditions


def epoch_ms(moment: datetime, name: str) -> int:
    """``moment`` in epoch milliseconds, rounded up (never before it).

    Raises:
        DelayError: ``moment`` is naive (the message names ``name=``).
    """
    return to_epoch_ms(require_aware(moment, f"{name}="))
