"""What every `postdate` subcommand shares: loading the app, running on the broker,
turning postdate errors into one line and an exit code."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from aio_pika.abc import AbstractRobustConnection

from postdate.connection import connect
from postdate.consumer import Consumer
from postdate.errors import PostdateError
from postdate.settings import Settings
from postdate.topology import Topology, ladder_topology

T = TypeVar("T")

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


def run_async(coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run ``coroutine()``; a postdate error is one line on stderr and exit code 2."""
    try:
        return asyncio.run(coroutine())  # type: ignore[arg-type]
    except PostdateError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None


def on_broker(
    settings: Settings, name: str, use: Callable[[AbstractRobustConnection], Awaitable[T]]
) -> T:
    """Connect, run ``use`` on the connection, close; postdate errors become exit code 2."""

    async def session() -> T:
        connection = await connect(settings.url, name=f"postdate-cli-{name}")
        async with connection:
            return await use(connection)

    return run_async(session)


def topology_of(settings: Settings, spec: str | None) -> Topology:
    """The ladder, plus the app's queues when ``spec`` (MODULE:APP) is given."""
    if spec is None:
        return ladder_topology(settings.prefix)
    return load_app(spec).topology(settings.prefix, settings.delivery_limit)
