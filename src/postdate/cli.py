"""`postdate` command line: worker, topology, poison, status."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aiormq
import typer
from aio_pika.abc import AbstractRobustConnection

from postdate.connection import connect
from postdate.consumer import Consumer
from postdate.declare import declare_topology, delete_topology, to_definitions
from postdate.errors import PostdateError
from postdate.logs import configure_logging
from postdate.poison import list_poison, purge_poison, replay_poison
from postdate.publisher import Publisher
from postdate.settings import Settings
from postdate.topology import (
    Names,
    Topology,
    ladder_topology,
    poison_queue,
    retry_queue,
)
from postdate.unroutable import count_unroutable, redeliver_unroutable
from postdate.worker import Worker

T = TypeVar("T")

app = typer.Typer(help="Send commands into the future on RabbitMQ.", no_args_is_help=True)
topology_app = typer.Typer(help="Declare, show or export the broker topology.")
poison_app = typer.Typer(help="Inspect, replay or purge parked messages.")
app.add_typer(topology_app, name="topology")
unroutable_app = typer.Typer(help="Commands whose queue did not exist at delivery time.")
app.add_typer(poison_app, name="poison")
app.add_typer(unroutable_app, name="unroutable")

AppSpec = Annotated[str | None, typer.Argument(help="MODULE:APP of a postdate Consumer")]


def load_app(spec: str) -> Consumer:
    """Import ``module:attribute`` and return the Consumer it names.

    Raises:
        typer.BadParameter: malformed spec, module not importable, or not a Consumer.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"{spec!r} is not MODULE:APP, e.g. consumers.example:app")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    consumer = getattr(module, attribute, None)
    if not isinstance(consumer, Consumer):
        raise typer.BadParameter(f"{spec!r} is not a postdate Consumer")
    return consumer


def _run(coroutine: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(coroutine())  # type: ignore[arg-type]
    except PostdateError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None


def _on_broker(
    settings: Settings, name: str, use: Callable[[AbstractRobustConnection], Awaitable[T]]
) -> T:
    """Connect, run ``use`` on the connection, close; postdate errors become exit code 2."""

    async def session() -> T:
        connection = await connect(settings.url, name=f"postdate-cli-{name}")
        async with connection:
            return await use(connection)

    return _run(session)


def _topology(settings: Settings, spec: str | None) -> Topology:
    if spec is None:
        return ladder_topology(settings.prefix)
    return load_app(spec).topology(settings.prefix, settings.delivery_limit)


@app.command()
def worker(
    spec: Annotated[str, typer.Argument(help="MODULE:APP of a postdate Consumer")],
    prefetch: Annotated[int | None, typer.Option(min=1)] = None,
    concurrency: Annotated[int | None, typer.Option(min=1)] = None,
    grace_period: Annotated[float | None, typer.Option(min=0)] = None,
) -> None:
    """Consume the app's queues until SIGTERM/SIGINT; exit 0 on a clean stop."""
    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("prefetch", prefetch),
            ("concurrency", concurrency),
            ("grace_period", grace_period),
        )
        if value is not None
    }
    settings = Settings.load(**overrides)
    consumer = load_app(spec)
    configure_logging()
    _run(lambda: Worker(consumer, settings).run_until_signalled())


@topology_app.command("declare")
def topology_declare(spec: AppSpec = None) -> None:
    """Declare the ladder (and the app's queues when MODULE:APP is given)."""
    settings = Settings.load()
    topology = _topology(settings, spec)

    _on_broker(settings, "topology", lambda connection: declare_topology(connection, topology))
    typer.echo(
        f"declared {len(topology.exchanges)} exchanges, {len(topology.queues)} queues, "
        f"{len(topology.bindings)} bindings under prefix {settings.prefix!r}"
    )


@topology_app.command("delete")
def topology_delete(
    spec: AppSpec = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: messages are deleted too")] = False,
) -> None:
    """Delete the ladder (and the app's queues), messages included: for migrations."""
    if not yes:
        raise typer.BadParameter("deleting drops every scheduled message in it: add --yes")
    settings = Settings.load()
    topology = _topology(settings, spec)

    _on_broker(settings, "topology", lambda connection: delete_topology(connection, topology))
    typer.echo(f"deleted {len(topology.queues)} queues, {len(topology.exchanges)} exchanges")


@topology_app.command("show")
def topology_show(spec: AppSpec = None) -> None:
    """Print the exchanges and queues with their arguments (no broker needed)."""
    topology = _topology(Settings.load(), spec)
    for exchange in topology.exchanges:
        typer.echo(f"exchange {exchange.name} ({exchange.type.value}) {dict(exchange.arguments)}")
    for queue in topology.queues:
        typer.echo(f"queue    {queue.name} {dict(queue.arguments)}")
    typer.echo(f"{len(topology.bindings)} bindings")


@topology_app.command("export")
def topology_export(
    spec: AppSpec = None,
    output: Annotated[Path, typer.Option(help="file to write")] = Path("rabbit/definitions.json"),
) -> None:
    """Write the topology as a RabbitMQ definitions file (load_definitions)."""
    definitions = to_definitions(_topology(Settings.load(), spec))
    output.write_text(json.dumps(definitions, indent=2) + "\n")
    typer.echo(f"wrote {output}")


@poison_app.command("list")
def poison_list(
    queue: Annotated[str, typer.Argument(help="the command queue")],
    limit: Annotated[int, typer.Option(min=1)] = 100,
) -> None:
    """List parked messages of QUEUE (they stay parked)."""
    settings = Settings.load()
    entries = _on_broker(settings, "poison", lambda c: list_poison(c, queue, limit))
    for entry in entries:
        failed = entry.failed_at.isoformat() if entry.failed_at else "-"
        typer.echo(
            f"{entry.message_id}  {entry.type}  {entry.reason}  attempts={entry.attempts}  "
            f"failed_at={failed}  {entry.error_type}: {entry.error_message[:120]}"
        )
    typer.echo(f"{len(entries)} parked in {poison_queue(queue)}")


@poison_app.command("show")
def poison_show(queue: str, message_id: str) -> None:
    """Show one parked message with its body and traceback."""
    settings = Settings.load()
    entries = _on_broker(settings, "poison", lambda c: list_poison(c, queue, limit=100_000))
    for entry in entries:
        if entry.message_id == message_id:
            for key, value in vars(entry).items():
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                typer.echo(f"{key}: {text}")
            return
    typer.secho(f"no parked message {message_id} in {poison_queue(queue)}", err=True)
    raise typer.Exit(1)


@poison_app.command("replay")
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

    replayed = _run(replay)
    typer.echo(f"replayed {len(replayed)} message(s) to {queue}")


@poison_app.command("purge")
def poison_purge(
    queue: str, yes: Annotated[bool, typer.Option("--yes", help="confirm deletion")] = False
) -> None:
    """Delete every parked message of QUEUE."""
    if not yes:
        raise typer.BadParameter("purging deletes messages for good: add --yes")
    settings = Settings.load()

    purged = _on_broker(settings, "poison", lambda connection: purge_poison(connection, queue))
    typer.echo(f"purged {purged} message(s) from {poison_queue(queue)}")


@unroutable_app.command("list")
def unroutable_list() -> None:
    """Count parked commands per destination queue (they stay parked)."""
    settings = Settings.load()

    counts = _on_broker(
        settings, "unroutable", lambda connection: count_unroutable(connection, settings.prefix)
    )
    for queue, count in sorted(counts.items()):
        typer.echo(f"{queue:<60} {count:>9}")
    typer.echo(f"{sum(counts.values())} parked in {Names(settings.prefix).unroutable}")


@unroutable_app.command("redeliver")
def unroutable_redeliver(
    queue: Annotated[str | None, typer.Option(help="only commands for this queue")] = None,
) -> None:
    """Send parked commands on to their queue (declare it first), confirmed, then removed."""
    settings = Settings.load()

    async def redeliver() -> int:
        connection = await connect(settings.url, name="postdate-cli-unroutable")
        async with connection, Publisher(settings=settings, declare=False) as publisher:
            return await redeliver_unroutable(connection, publisher, queue)

    typer.echo(f"redelivered {_run(redeliver)} command(s)")


@app.command()
def status(spec: AppSpec = None) -> None:
    """Message and consumer counts of the ladder and (with MODULE:APP) the app's queues."""
    settings = Settings.load()
    names = Names(settings.prefix)
    queues = [names.delay_queue(level) for level in range(28)] + [names.unroutable]
    if spec is not None:
        consumer = load_app(spec)
        for queue in consumer.queues():
            queues.append(queue)
            queues.extend(retry_queue(queue, tier) for tier in consumer.tiers(queue))
            queues.append(poison_queue(queue))

    async def read(connection: AbstractRobustConnection) -> list[tuple[str, str, str]]:
        rows = []
        for name in queues:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(name, passive=True)
                result = declared.declaration_result
                rows.append((name, str(result.message_count), str(result.consumer_count)))
            except aiormq.exceptions.ChannelNotFoundEntity:
                rows.append((name, "missing", "-"))
            finally:
                if not channel.is_closed:
                    await channel.close()
        return rows

    typer.echo(f"{'queue':<60} {'messages':>9} {'consumers':>9}")
    for name, messages, consumers in _on_broker(settings, "status", read):
        typer.echo(f"{name:<60} {messages:>9} {consumers:>9}")


def main() -> None:
    """The ``postdate`` command; a postdate error (bad settings, unreachable broker) is
    one line on stderr and exit code 2, not a traceback."""
    try:
        app()
    except PostdateError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
