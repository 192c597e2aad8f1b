"""`postdate schedule cancel`'s work: cancelling ids (or what filters match) in chunks,
and the report of which were cancelled in time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer

from postdate.cli._errors import EXIT_FOUND_NOTHING, fail
from postdate.cli.common import print_json, progress_bar
from postdate.schedule import CancelResult, ScheduleStore

PROGRESS_ABOVE = 100  # ids: a progress bar when cancelling more
UNKNOWN = "unknown"  # the status of an id that was never scheduled, in `cancel`'s report
_STATUSES = ("cancelled", "already-cancelled", "too-late", UNKNOWN)


@dataclass(frozen=True)
class Cancel:
    """One id's line in `cancel`'s report."""

    message_id: str
    status: str  # a CancelStatus, or "unknown"
    detail: str = ""
    unconfirmed: tuple[str, ...] = ()

    @classmethod
    def of(cls, result: CancelResult) -> Cancel:
        """The line of a cancel's result."""
        return cls(result.message_id, str(result.status), result.detail, result.unconfirmed)


@dataclass(frozen=True)
class CancelWhere:
    """What `cancel` was asked to cancel: ids, or the upcoming commands that match."""

    ids: tuple[str, ...]
    scheduled_only: bool
    filters: dict[str, Any]
    reason: str


async def cancel(store: ScheduleStore, what: CancelWhere, progress_enabled: bool) -> list[Cancel]:
    """Cancel ``what``; one line per id, in the order asked (or due)."""
    unknown: list[str] = []
    if what.ids:
        targets = []
        for message_id in dict.fromkeys(what.ids):
            if what.scheduled_only and not await store.known(message_id):
                unknown.append(message_id)
            else:
                targets.append(message_id)
    else:
        upcoming = await store.upcoming(**what.filters, limit=None)
        targets = [row.message_id for row in upcoming]
    done: dict[str, Cancel] = {mid: Cancel(mid, UNKNOWN) for mid in unknown}
    many = progress_enabled and len(targets) > PROGRESS_ABOVE
    with progress_bar("cancelling", enabled=many) as progress:
        for result in await store.cancel_many(targets, reason=what.reason, progress=progress):
            done[result.message_id] = Cancel.of(result)
    order = list(dict.fromkeys(what.ids)) if what.ids else targets
    return [done[mid] for mid in order]


def cancel_report(results: Sequence[Cancel], as_json: bool) -> None:
    """Print each id's status and the counts; exit 1 when one was too late or unknown."""
    by_status: dict[str, list[str]] = {}
    for result in results:
        by_status.setdefault(result.status, []).append(result.message_id)
    counts = {status: len(by_status.get(status, [])) for status in _STATUSES}
    if as_json:
        print_json(
            {
                **{key.replace("-", "_"): count for key, count in counts.items()},
                "results": [
                    {
                        "message_id": r.message_id,
                        "status": r.status,
                        "detail": r.detail,
                        "unconfirmed": list(r.unconfirmed),
                    }
                    for r in results
                ],
            }
        )
    else:
        for r in results:
            typer.echo(f"{r.message_id}  {r.status}{_cancel_detail(r)}")
        shown_statuses = _STATUSES if counts[UNKNOWN] else _STATUSES[:-1]
        typer.echo(", ".join(f"{s.replace('-', ' ')} {counts[s]:,}" for s in shown_statuses))
    problems = []
    if by_status.get("too-late"):
        problems.append(f"too late for {_some(by_status['too-late'])}")
    if by_status.get(UNKNOWN):
        problems.append(f"no scheduled command {_some(by_status[UNKNOWN], quote=True)}")
    if problems:
        fail("; ".join(problems), EXIT_FOUND_NOTHING)


def _cancel_detail(result: Cancel) -> str:
    if result.status == UNKNOWN:
        return "  not in the outbox, no outcome recorded (--unscheduled cancels it anyway)"
    if result.unconfirmed:
        workers = ", ".join(result.unconfirmed)
        return f"  (not yet confirmed by {workers}: they will not start it once they see it)"
    return f"  {result.detail}" if result.detail else ""


def _some(ids: Sequence[str], *, quote: bool = False, shown_at_most: int = 5) -> str:
    names = [repr(mid) if quote else mid for mid in ids[:shown_at_most]]
    more = f" and {len(ids) - shown_at_most:,} more" if len(ids) > shown_at_most else ""
    return ", ".join(names) + more
