"""`postdate unroutable`: commands whose queue did not exist at delivery time."""

from __future__ import annotations

from typing import Annotated

import typer

from postdate.cli.common import on_broker, run_async
from postdate.connection import connect
from postdate.publisher import Publisher
from postdate.settings import Settings
from postdate.topology import Names
from postdate.unroutable import count_unroutable, redeliver_unroutable

app = typer.Typer(help="Commands whose queue did not exist at delivery time.")


@app.command("list")
def unroutable_list() -> None:
    """Count parked commands per destination queue (they stay parked)."""
    settings = Settings.load()

    counts = on_broker(
        settings, "unroutable", lambda connection: count_unroutable(connection, settings.prefix)
    )
    for queue, count in sorted(counts.items()):
        typer.echo(f"{queue:<60} {count:>9}")
    typer.echo(f"{sum(counts.values())} parked in {Names(settings.prefix).unroutable}")


@app.command("redeliver")
def unroutable_redeliver(
    queue: Annotated[str | None, typer.Option(help="only commands for this queue")] = None,
) -> None:
    """Send parked commands on to their queue (declare it first), confirmed, then removed."""
    settings = Settings.load()

    async def redeliver() -> int:
        connection = await connect(settings.url, name="postdate-cli-unroutable")
        async with connection, Publisher(settings=settings, declare=False) as publisher:
            return await redeliver_unroutable(connection, publisher, queue)

    typer.echo(f"redelivered {run_async(redeliver)} command(s)")
