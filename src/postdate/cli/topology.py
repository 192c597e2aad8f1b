"""`postdate topology`: declare, delete, show or export the broker topology."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from postdate.cli.common import AppSpec, on_broker, topology_of
from postdate.declare import declare_topology, delete_topology, to_definitions
from postdate.settings import Settings

app = typer.Typer(help="Declare, show or export the broker topology.")


@app.command("declare")
def topology_declare(spec: AppSpec = None) -> None:
    """Declare the ladder (and the app's queues when MODULE:APP is given)."""
    settings = Settings.load()
    topology = topology_of(settings, spec)

    on_broker(settings, "topology", lambda connection: declare_topology(connection, topology))
    typer.echo(
        f"declared {len(topology.exchanges)} exchanges, {len(topology.queues)} queues, "
        f"{len(topology.bindings)} bindings under prefix {settings.prefix!r}"
    )


@app.command("delete")
def topology_delete(
    spec: AppSpec = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: messages are deleted too")] = False,
) -> None:
    """Delete the ladder (and the app's queues), messages included: for migrations."""
    if not yes:
        raise typer.BadParameter("deleting drops every scheduled message in it: add --yes")
    settings = Settings.load()
    topology = topology_of(settings, spec)

    on_broker(settings, "topology", lambda connection: delete_topology(connection, topology))
    typer.echo(f"deleted {len(topology.queues)} queues, {len(topology.exchanges)} exchanges")


@app.command("show")
def topology_show(spec: AppSpec = None) -> None:
    """Print the exchanges and queues with their arguments (no broker needed)."""
    topology = topology_of(Settings.load(), spec)
    for exchange in topology.exchanges:
        typer.echo(f"exchange {exchange.name} ({exchange.type.value}) {dict(exchange.arguments)}")
    for queue in topology.queues:
        typer.echo(f"queue    {queue.name} {dict(queue.arguments)}")
    typer.echo(f"{len(topology.bindings)} bindings")


@app.command("export")
def topology_export(
    spec: AppSpec = None,
    output: Annotated[Path, typer.Option(help="file to write")] = Path("rabbit/definitions.json"),
) -> None:
    """Write the topology as a RabbitMQ definitions file (load_definitions)."""
    definitions = to_definitions(topology_of(Settings.load(), spec))
    output.write_text(json.dumps(definitions, indent=2) + "\n")
    typer.echo(f"wrote {output}")
