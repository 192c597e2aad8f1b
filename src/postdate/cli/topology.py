"""`postdate topology`: declare, delete, show or export the broker topology.

Every error is one line on stderr and a non-zero exit code: 2 for bad usage, settings,
files or broker errors, 1 when ``delete`` refuses because queues still hold messages
or have consumers.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import aiormq
import typer
from aio_pika.abc import AbstractConnection

from postdate._errors import PostdateError
from postdate._settings import Settings
from postdate.broker._declare import (
    QueueState,
    declare_topology,
    delete_topology,
    existing_exchanges,
    merge_definitions,
    queue_states,
    to_definitions,
)
from postdate.broker._registry import register, unregister
from postdate.broker._topology import Topology, ladder_topology
from postdate.cli.common import (
    EXIT_ERROR,
    EXIT_FOUND_NOTHING,
    AppSpec,
    Json,
    fail,
    load_app,
    on_broker,
    print_json,
    shared_topology,
    topology_of,
)

app = typer.Typer(help="Declare, delete, show or export the broker topology.")

EXIT_REFUSED = EXIT_FOUND_NOTHING  # delete refused: queues hold messages or have consumers
MAX_NAMED = 5  # queues named in a refusal; the rest are counted

_KINDS = ("exchanges", "queues", "bindings")


class Failure(Exception):
    """An error reported as one line on stderr with exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn every expected error into ``error: ...`` on one stderr line and an exit code."""
    try:
        yield
    except Failure as exc:
        fail(str(exc), exc.code)
    except typer.BadParameter as exc:
        fail(exc.message)
    except PostdateError as exc:
        fail(str(exc))
    except aiormq.exceptions.AMQPError as exc:
        fail(f"broker refused: {exc!r}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


@app.command("declare")
def topology_declare(spec: AppSpec = None, as_json: Json = False) -> None:
    """Declare the ladder (and the app's queues when MODULE:APP is given)."""
    with one_line_errors():
        settings = Settings.load()
        topology = topology_of(settings, spec)
        queues = load_app(spec).queues() if spec is not None else []

        async def declare(connection: AbstractConnection) -> None:
            await declare_topology(connection, topology)
            await register(connection, settings.prefix, queues)

        on_broker(settings, "topology", declare)
    counts = {kind: len(getattr(topology, kind)) for kind in _KINDS}
    if as_json:
        print_json({"prefix": settings.prefix, "declared": counts})
        return
    typer.echo(
        f"declared {counts['exchanges']} exchanges, {counts['queues']} queues, "
        f"{counts['bindings']} bindings under prefix {settings.prefix!r}"
    )


@dataclass(frozen=True)
class Part:
    """One thing ``delete`` was asked to delete: the app's queues, or the ladder."""

    label: str
    topology: Topology


def app_part(settings: Settings, spec: str) -> Part:
    """The app's own queues (command queues, retry tiers, poison queues): its topology
    without what every service shares (the ladder; the plugin's exchange)."""
    topology = topology_of(settings, spec)
    common = shared_topology(settings)
    shared = {queue.name for queue in common.queues} | {e.name for e in common.exchanges}
    return Part(
        f"the queues of {spec}",
        Topology(
            exchanges=tuple(e for e in topology.exchanges if e.name not in shared),
            queues=tuple(queue for queue in topology.queues if queue.name not in shared),
        ),
    )


def ladder_part(settings: Settings) -> Part:
    """The delay ladder of the prefix, with the deliver and unroutable exchanges and queue."""
    return Part(f"the delay ladder of prefix {settings.prefix!r}", ladder_topology(settings.prefix))


def refusal(part: Part, states: Mapping[str, QueueState | None]) -> str | None:
    """Why ``part`` must not be deleted without --force, or None: its queues hold
    messages, or consumers are attached (workers whose unacked deliveries are not counted)."""
    present = [
        (queue.name, state)
        for queue in part.topology.queues
        if (state := states.get(queue.name)) is not None
    ]
    held = {name: state.messages for name, state in present if state.messages}
    consumed = {name: state.consumers for name, state in present if state.consumers}
    reasons = []
    if held:
        total = _count(sum(held.values()), "message")
        reasons.append(f"its queues still hold {total} ({_listed(held)})")
    if consumed:
        total = _count(sum(consumed.values()), "consumer")
        reasons.append(f"{total} still attached, stop the workers first ({_listed(consumed)})")
    if not reasons:
        return None
    return f"refusing to delete {part.label}: {'; '.join(reasons)}; --force deletes anyway"


def _listed(counts: Mapping[str, int]) -> str:
    """``a: 3, b: 1``, largest first, at most MAX_NAMED queues named."""
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    listed = ", ".join(f"{name}: {count}" for name, count in ranked[:MAX_NAMED])
    if len(ranked) > MAX_NAMED:
        listed += f" and {len(ranked) - MAX_NAMED} more queues"
    return listed


async def delete_parts(
    connection: AbstractConnection, prefix: str, parts: Sequence[Part], *, force: bool
) -> dict[str, Any]:
    """Delete the queues and exchanges of ``parts`` that exist, after checking (unless
    ``force``) that none of their queues holds a message or has a consumer; deleted
    command queues leave the registry (``status`` stops listing them).

    Raises:
        Failure: a queue holds messages or has consumers and ``force`` is false (nothing
            was deleted).
    """
    topology = sum((part.topology for part in parts), Topology())
    states = await queue_states(connection, [queue.name for queue in topology.queues])
    reasons = [] if force else [reason for part in parts if (reason := refusal(part, states))]
    if reasons:
        raise Failure("; ".join(reasons), EXIT_REFUSED)
    exchanges = await existing_exchanges(connection, [e.name for e in topology.exchanges])
    present = Topology(
        exchanges=tuple(e for e in topology.exchanges if e.name in exchanges),
        queues=tuple(queue for queue in topology.queues if states[queue.name] is not None),
    )
    deleted = await delete_topology(connection, present)
    await unregister(connection, prefix, [queue.name for queue in present.queues])
    return {
        "deleted": {
            "queues": deleted.queues,
            "exchanges": deleted.exchanges,
            "messages": deleted.messages,
        },
        "missing": {
            "queues": len(topology.queues) - len(present.queues),
            "exchanges": len(topology.exchanges) - len(present.exchanges),
        },
    }


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
    with one_line_errors():
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
        f"deleted {_count(deleted['queues'], 'queue')} "
        f"({_count(deleted['messages'], 'message')}) and "
        f"{_count(deleted['exchanges'], 'exchange')}; already missing: "
        f"{_count(missing['queues'], 'queue')}, {_count(missing['exchanges'], 'exchange')}"
    )
    if not ladder:
        typer.echo(f"kept the delay ladder of prefix {settings.prefix!r} (--ladder deletes it)")


@app.command("show")
def topology_show(spec: AppSpec = None, as_json: Json = False) -> None:
    """Print the exchanges and queues with their arguments (no broker needed)."""
    with one_line_errors():
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
    with one_line_errors():
        definitions = to_definitions(topology_of(Settings.load(), spec))
        if output is None:
            print_json(definitions)
            return
        kept = export_into(output, definitions)
    counts = ", ".join(f"{len(definitions[kind])} {kind}" for kind in _KINDS)
    if kept is None:
        typer.echo(f"wrote {output}: {counts} (new file)")
    else:
        typer.echo(f"wrote {output}: {counts}; kept {kept or 'no users, vhosts or permissions'}")


def export_into(path: Path, definitions: Mapping[str, Any]) -> str | None:
    """Merge ``definitions`` into the definitions file at ``path`` (or create it), atomically.

    Returns:
        What was kept of the file besides the topology, e.g. ``1 users, 1 vhosts`` (empty
        when nothing else was in it); None for a new file.

    Raises:
        Failure: the file cannot be read or written, or is no definitions document; it is
            left untouched.
    """
    target = path.resolve()
    if not target.exists():
        _write_atomically(target, definitions)
        return None
    try:
        existing = json.loads(target.read_text())
        merged = merge_definitions(existing, definitions)
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise Failure(f"{path} is not valid JSON ({exc}); left it untouched") from None
    except ValueError as exc:
        raise Failure(f"{path} {exc}; left it untouched") from None
    _write_atomically(target, merged)
    return ", ".join(
        f"{len(value)} {key}"
        for key, value in merged.items()
        if key not in _KINDS and isinstance(value, list)
    )


def _write_atomically(target: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` to a temporary file next to ``target``, then rename it over
    ``target``: a reader (or a crash) never sees half a file. Keeps ``target``'s mode."""
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise Failure(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(document, indent=2) + "\n")
        os.chmod(temporary, target.stat().st_mode & 0o7777 if target.exists() else 0o644)
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise Failure(f"cannot write {target}: {exc.strerror or exc}") from None
