"""`postdate poison`: list, show, replay or purge parked messages, by filter.

Each run handles the messages parked when it started, once; what it reads is given
back when it ends (see :mod:`postdate.parking._parked`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from postdate._settings import Settings
from postdate.cli._errors import EXIT_FOUND_NOTHING, CliTyper, fail
from postdate.cli.common import (
    Json,
    cli_connect,
    on_broker,
    parse_age,
    print_json,
    progress_bar,
    run_async,
)
from postdate.parking._parked import MAX_HELD, Tally
from postdate.parking._poison import PoisonEntry
from postdate.parking._triage import (
    PoisonFilter,
    list_poison,
    parking_of,
    purge_poison,
    replay_poison,
)
from postdate.publish._publisher import Publisher

app = CliTyper(help="List, show, replay or purge parked messages.")

Queue = Annotated[str, typer.Argument(help="the command queue (not its .poison queue)")]
Ids = Annotated[list[str] | None, typer.Option("--id", help="this message id (repeatable)")]
Types = Annotated[list[str] | None, typer.Option("--type", help="this command type")]
Reasons = Annotated[list[str] | None, typer.Option("--reason", help="e.g. handler_error")]
ErrorTypes = Annotated[list[str] | None, typer.Option("--error-type", help="e.g. KeyError")]
OlderThan = Annotated[str | None, typer.Option(help="parked at least this long ago: 2h, 7d")]
NewerThan = Annotated[str | None, typer.Option(help="parked at most this long ago: 30m")]


def _filter(
    ids: list[str] | None,
    types: list[str] | None,
    reasons: list[str] | None,
    error_types: list[str] | None,
    older_than: str | None,
    newer_than: str | None,
) -> PoisonFilter:
    return PoisonFilter(
        message_ids=frozenset(ids or ()),
        types=frozenset(types or ()),
        reasons=frozenset(reasons or ()),
        error_types=frozenset(error_types or ()),
        older_than=parse_age(older_than),
        newer_than=parse_age(newer_than),
    )


def _row(entry: PoisonEntry) -> dict[str, Any]:
    return {
        "message_id": entry.message_id,
        "type": entry.type,
        "reason": entry.reason,
        "error_type": entry.error_type,
        "error_message": entry.error_message,
        "attempts": entry.attempts,
        "failed_at": entry.failed_at.isoformat() if entry.failed_at else None,
        "consumer": entry.consumer,
        "origin_queue": entry.origin_queue,
    }


@app.command("list")
def poison_list(
    queue: Queue,
    limit: Annotated[int, typer.Option(min=1, help="rows to print")] = 100,
    ids: Ids = None,
    types: Types = None,
    reasons: Reasons = None,
    error_types: ErrorTypes = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    as_json: Json = False,
) -> None:
    """List parked messages of QUEUE; they stay parked."""
    where = _filter(ids, types, reasons, error_types, older_than, newer_than)
    settings = Settings.load()
    parking_of(queue)
    with progress_bar("reading", enabled=not as_json) as progress:
        listing = on_broker(settings, "poison", lambda c: list_poison(c, queue, where, progress))
    shown = listing.entries[:limit]
    if as_json:
        print_json(
            {
                "queue": listing.queue,
                "parked": listing.parked,
                "read": listing.read,
                "matching": len(listing.entries),
                "entries": [_row(entry) for entry in shown],
            }
        )
        raise typer.Exit(EXIT_FOUND_NOTHING if listing.read < listing.parked else 0)
    for entry in shown:
        failed = entry.failed_at.isoformat(timespec="seconds") if entry.failed_at else "-"
        typer.echo(
            f"{entry.message_id}  {entry.type}  {entry.reason}  attempts={entry.attempts}  "
            f"failed_at={failed}  {entry.error_type}: {entry.error_message[:120]}"
        )
    typer.echo(
        f"showing {len(shown):,} of {len(listing.entries):,} matching; "
        f"{listing.parked:,} parked in {listing.queue}"
    )
    if listing.read < listing.parked:
        fail(f"read {listing.read:,} of {listing.parked:,} (at most {MAX_HELD:,} at once)", 1)


@app.command("show")
def poison_show(queue: Queue, message_id: str, as_json: Json = False) -> None:
    """Show one parked message with its body and traceback (exit 1 when not parked)."""
    settings = Settings.load()
    parking_of(queue)
    where = PoisonFilter(message_ids=frozenset({message_id}))
    listing = on_broker(settings, "poison", lambda c: list_poison(c, queue, where))
    if not listing.entries:
        among = f"read {listing.read:,} of {listing.parked:,} parked"
        fail(f"no parked message {message_id} in {listing.queue} ({among})", EXIT_FOUND_NOTHING)
    entry = listing.entries[0]
    details = _row(entry) | {
        "body": entry.body.decode(errors="replace"),
        "traceback": entry.traceback,
    }
    if as_json:
        print_json(details)
        return
    for key, value in details.items():
        typer.echo(f"{key}: {value}")


@app.command("replay")
def poison_replay(
    queue: Queue,
    replay_all: Annotated[bool, typer.Option("--all", help="every parked message")] = False,
    ids: Ids = None,
    types: Types = None,
    reasons: Reasons = None,
    error_types: ErrorTypes = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    as_json: Json = False,
) -> None:
    """Send parked messages back to their queue as attempt 1: each copy is confirmed,
    then the parked message removed. Give --all, or filters."""
    where = _filter(ids, types, reasons, error_types, older_than, newer_than)
    if where == PoisonFilter() and not replay_all:
        fail("say which messages: --all, or --id/--type/--reason/--error-type/--older-than")
    settings = Settings.load()
    parking_of(queue)

    async def replay() -> Tally:
        async with (
            await cli_connect(settings, "poison") as connection,
            Publisher(settings=settings, declare=False) as publisher,
        ):
            with progress_bar("replaying", enabled=not as_json) as progress:
                return await replay_poison(connection, publisher, queue, where, progress)

    _report("replayed", queue, run_async(replay), ids, as_json)


@app.command("purge")
def poison_purge(
    queue: Queue,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: deleted for good")] = False,
    ids: Ids = None,
    types: Types = None,
    reasons: Reasons = None,
    error_types: ErrorTypes = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    as_json: Json = False,
) -> None:
    """Delete parked messages of QUEUE for good (all, or those the filters match)."""
    if not yes:
        fail("purging deletes messages for good: add --yes")
    where = _filter(ids, types, reasons, error_types, older_than, newer_than)
    settings = Settings.load()
    parking_of(queue)
    with progress_bar("purging", enabled=not as_json) as progress:
        tally = on_broker(settings, "poison", lambda c: purge_poison(c, queue, where, progress))
    _report("purged", queue, tally, ids, as_json)


def _report(done: str, queue: str, tally: Tally, ids: list[str] | None, as_json: bool) -> None:
    """Print what a run did; exit 1 when it stopped early or an asked-for id was not parked."""
    missing = sorted(set(ids or ()) - set(tally.moved))
    if as_json:
        print_json(
            {
                "queue": parking_of(queue),
                done: len(tally.moved),
                "matching": tally.matched,
                "parked_at_start": tally.parked,
                "read": tally.read,
                "not_parked": missing,
                "error": str(tally.error) if tally.error else None,
            }
        )
    else:
        typer.echo(
            f"{done} {len(tally.moved):,} of {tally.matched:,} matching "
            f"({tally.parked:,} parked in {parking_of(queue)} when the run started, "
            f"{tally.read:,} read)"
        )
    if tally.error is not None:
        fail(f"stopped: {tally.error}; the rest stay parked", EXIT_FOUND_NOTHING)
    if missing:
        fail(f"not parked in {parking_of(queue)}: {', '.join(missing)}", EXIT_FOUND_NOTHING)
    if not tally.complete:
        fail(
            f"read {tally.read:,} of {tally.parked:,}: the connection was lost, another client "
            f"took messages, or over {MAX_HELD:,} left parked were held at once",
            EXIT_FOUND_NOTHING,
        )
