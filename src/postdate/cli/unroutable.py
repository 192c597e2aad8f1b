"""`postdate unroutable`: commands whose queue did not exist at delivery time."""

from __future__ import annotations

from typing import Annotated

import typer

from postdate._settings import Settings
from postdate.broker._topology import Names
from postdate.cli._errors import EXIT_FOUND_NOTHING, CliTyper, fail
from postdate.cli.common import Json, cli_connect, on_broker, print_json, progress_bar, run_async
from postdate.parking._unroutable import Redelivery, count_unroutable, redeliver_unroutable
from postdate.publish._publisher import Publisher

app = CliTyper(help="Commands whose queue did not exist at delivery time.")


@app.command("list")
def unroutable_list(as_json: Json = False) -> None:
    """Count parked commands per destination queue (they stay parked)."""
    settings = Settings.load()
    with progress_bar("reading", enabled=not as_json) as progress:
        counts, parked = on_broker(
            settings, "unroutable", lambda c: count_unroutable(c, settings.prefix, progress)
        )
    queue = Names(settings.prefix).unroutable
    if as_json:
        print_json({"queue": queue, "parked": parked, "by_queue": dict(counts)})
        return
    for destination, count in sorted(counts.items()):
        typer.echo(f"{destination:<60} {count:>9,}")
    typer.echo(f"{parked:,} parked in {queue}")


@app.command("redeliver")
def unroutable_redeliver(
    queue: Annotated[
        list[str] | None, typer.Option(help="only commands for this queue (repeatable)")
    ] = None,
    as_json: Json = False,
) -> None:
    """Send parked commands into their queue, confirmed, then removed. Commands whose
    queue still does not exist stay parked (exit 1, naming the queues)."""
    settings = Settings.load()

    async def redeliver() -> Redelivery:
        async with (
            await cli_connect(settings, "unroutable") as connection,
            Publisher(settings=settings, declare=False) as publisher,
        ):
            with progress_bar("redelivering", enabled=not as_json) as progress:
                return await redeliver_unroutable(connection, publisher, queue or None, progress)

    result = run_async(redeliver)
    tally = result.tally
    if as_json:
        print_json(
            {
                "redelivered": len(tally.moved),
                "matching": tally.matched,
                "parked_at_start": tally.parked,
                "queue_missing": dict(result.missing),
                "error": str(tally.error) if tally.error else None,
            }
        )
    else:
        typer.echo(
            f"redelivered {len(tally.moved):,} of {tally.matched + result.missing.total():,} "
            f"matching ({tally.parked:,} parked when the run started)"
        )
    if tally.error is not None:
        fail(f"stopped: {tally.error}; the rest stay parked", EXIT_FOUND_NOTHING)
    if result.missing:
        waiting = ", ".join(f"{name} ({count:,})" for name, count in sorted(result.missing.items()))
        fail(
            f"still parked, their queue does not exist: {waiting}; start its worker or run "
            "`postdate topology declare MODULE:APP`, then redeliver",
            EXIT_FOUND_NOTHING,
        )
