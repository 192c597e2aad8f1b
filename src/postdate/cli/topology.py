"""`postdate topology`: declare, delete, show or export the broker topology.

Every error is one line on stderr and a non-zero exit code (:mod:`postdate.cli._errors`):
2 for bad usage, settings, files or broker errors, 1 when ``delete`` refuses because
queues still hold messages or have consumers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from aio_pika.abc import AbstractConnection

from postdate._settings import Settings
from postdate.broker._declare import declare_topology, to_definitions
from postdate.broker._registry import register
from postdate.broker._topology import Topology
from postdate.cli._errors import CliTyper, Failure
from postdate.cli.common import AppSpec, Json, load_app, on_broker, print_json, topology_of
from postdate.cli.topology_delete import app_part, count, delete_parts, ladder_part
from postdate.cli.topology_export import KINDS, export_into

app = CliTyper(help="Declare, delete, show or export the broker topology.")


@app.command("declare")
def topology_declare(spec: AppSpec = None, as_json: Json = False) -> None:
    """Declare the ladder (and the app's queues when MODULE:APP is given)."""
    settings = Settings.load()
    topology = topology_of(settings, spec)
    queues = load_app(spec).queues() if spec is not None else []

    async def declare(connection: AbstractConnection) -> None:
        await declare_topology(connection, topology)
        await register(connection, settings.prefix, queues)

    on_broker(settings, "topology", declare)
    counts = {kind: len(getattr(topology, kind)) for kind in KINDS}
    if as_json:
        print_json({"prefix": settings.prefix, "declared": counts})
        return
    typer.echo(
        f"declared {counts['exchanges']} exchanges, {counts['queues']} queues, "
        f"{counts['bindings']} bindings under prefix {settings.prefix!r}"
    )


@app.command("delete")
def topology_delete(
    spec: AppSpec = None,
    ladder: Annotated[
        bool, typer.Option("--ladder", help="delete the delay ladder every service shares")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: messages are deleted too")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="delete queues that hold messages or have consumers")
    ] = False,
    as_json: Json = False,
) -> None:
    """Delete an app's queues (MODULE:APP) or, with --ladder, the shared delay ladder.

    Refuses while those queues hold messages or have consumers, unless --force.
    """
    if spec is None and not ladder:
        raise Failure(
            "usage: postdate topology delete MODULE:APP --yes (the app's queues) "
            "or postdate topology delete --ladder --yes (the shared delay ladder)"
        )
    if not yes:
        raise Failure("deleting drops every message the queues hold: add --yes")
    settings = Settings.load()
    parts = [app_part(settings, spec)] if spec is not None else []
    parts += [ladder_part(settings)] if ladder else []
    report = on_broker(
        settings,
        "topology",
        lambda connection: delete_parts(connection, settings.prefix, parts, force=force),
    )
    report["ladder_deleted"] = ladder
    if as_json:
        print_json(report)
        return
    deleted, missing = report["deleted"], report["missing"]
    typer.echo(
        f"deleted {count(deleted['queues'], 'queue')} "
        f"({count(deleted['messages'], 'message')}) and "
        f"{count(deleted['exchanges'], 'exchange')}; already missing: "
        f"{count(missing['queues'], 'queue')}, {count(missing['exchanges'], 'exchange')}"
    )
    if not ladder:
        typer.echo(f"kept the delay ladder of prefix {settings.prefix!r} (--ladder deletes it)")


@app.command("show")
def topology_show(spec: AppSpec = None, as_json: Json = False) -> None:
    """Print the exchanges and queues with their arguments (no broker needed)."""
    settings = Settings.load()
    topology = topology_of(settings, spec)
    if as_json:
        print_json(_described(settings.prefix, topology))
        return
    for exchange in topology.exchanges:
        typer.echo(f"exchange {exchange.name} ({exchange.type.value}) {dict(exchange.arguments)}")
    for queue in topology.queues:
        typer.echo(f"queue    {queue.name} {dict(queue.arguments)}")
    typer.echo(f"{len(topology.bindings)} bindings")


def _described(prefix: str, topology: Topology) -> dict[str, Any]:
    return {
        "prefix": prefix,
        "exchanges": [
            {"name": e.name, "type": e.type.value, "arguments": dict(e.arguments)}
            for e in topology.exchanges
        ],
        "queues": [{"name": q.name, "arguments": dict(q.arguments)} for q in topology.queues],
        "bindings": [
            {
                "source": b.source,
                "destination": b.destination,
                "destination_type": "exchange" if b.to_exchange else "queue",
                "routing_key": b.routing_key,
            }
            for b in topology.bindings
        ],
    }


@app.command("export")
def topology_export(
    spec: AppSpec = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="definitions file to merge into (created if missing); stdout if not given",
        ),
    ] = None,
) -> None:
    """Write the topology as RabbitMQ definitions (load_definitions) to stdout or a file.

    Into an existing file: replaces or adds the topology, keeps users, vhosts and the rest.
    """
    definitions = to_definitions(topology_of(Settings.load(), spec))
    if output is None:
        print_json(definitions)
        return
    kept = export_into(output, definitions)
    counts = ", ".join(f"{len(definitions[kind])} {kind}" for kind in KINDS)
    if kept is None:
        typer.echo(f"wrote {output}: {counts} (new file)")
    else:
        typer.echo(f"wrote {output}: {counts}; kept {kept or 'no users, vhosts or permissions'}")
