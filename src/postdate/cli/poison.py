"""`postdate poison`: inspect, replay or purge parked messages."""

from __future__ import annotations

from typing import Annotated

import typer

from postdate.cli.common import on_broker, run_async
from postdate.connection import connect
from postdate.poison import list_poison, purge_poison, replay_poison
from postdate.publisher import Publisher
from postdate.settings import Settings
from postdate.topology import poison_queue

app = typer.Typer(help="Inspect, replay or purge parked messages.")


@app.command("list")
def poison_list(
    queue: Annotated[str, typer.Argument(help="the command queue")],
    limit: Annotated[int, typer.Option(min=1)] = 100,
) -> None:
    """List parked messages of QUEUE (they stay parked)."""
    settings = Settings.load()
    entries = on_broker(settings, "poison", lambda c: list_poison(c, queue, limit))
    for entry in entries:
        failed = entry.failed_at.isoformat() if entry.failed_at else "-"
        typer.echo(
            f"{entry.message_id}  {entry.type}  {entry.reason}  attempts={entry.attempts}  "
            f"failed_at={failed}  {entry.error_type}: {entry.error_message[:120]}"
        )
    typer.echo(f"{len(entries)} parked in {poison_queue(queue)}")


@app.command("show")
def poison_show(queue: str, message_id: str) -> None:
    """Show one parked message with its body and traceback."""
    settings = Settings.load()
    entries = on_broker(settings, "poison", lambda c: list_poison(c, queue, limit=100_000))
    for entry in entries:
        if entry.message_id == message_id:
            for key, value in vars(entry).items():
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                typer.echo(f"{key}: {text}")
            return
    typer.secho(f"no parked message {message_id} in {poison_queue(queue)}", err=True)
    raise typer.Exit(1)


@app.command("replay")
def poison_replay(
    queue: str,
    message_id: Annotated[list[str] | None, typer.Option("--id", help="replay only these")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="replay every parked message")] = False,
) -> None:
    """Send parked messages back to their queue as attempt 1 (confirmed, then removed)."""
    if not message_id and not replay_all:
        raise typer.BadParameter("give --id MESSAGE_ID (repeatable) or --all")
    settings = Settings.load()

    async def replay() -> list[str]:
        connection = await connect(settings.url, name="postdate-cli-poison")
        async with connection, Publisher(settings=settings, declare=False) as publisher:
            wanted = None if replay_all else set(message_id or [])
            return await replay_poison(connection, publisher, queue, wanted)

    replayed = run_async(replay)
    typer.echo(f"replayed {len(replayed)} message(s) to {queue}")


@app.command("purge")
def poison_purge(
    queue: str, yes: Annotated[bool, typer.Option("--yes", help="confirm deletion")] = False
) -> None:
    """Delete every parked message of QUEUE."""
    if not yes:
        raise typer.BadParameter("purging deletes messages for good: add --yes")
    settings = Settings.load()

    purged = on_broker(settings, "poison", lambda connection: purge_poison(connection, queue))
    typer.echo(f"purged {purged} message(s) from {poison_queue(queue)}")
