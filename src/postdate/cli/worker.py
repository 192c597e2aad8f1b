"""`postdate worker MODULE:APP`: consume until SIGTERM/SIGINT."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from postdate._settings import Settings
from postdate.cli.common import load_app, run_async
from postdate.consume import _heap as heap
from postdate.consume._worker import Worker
from postdate.observe._logs import configure_logging


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
    heap.tune_for_worker()
    run_async(lambda: Worker(consumer, settings).run_until_signalled())
