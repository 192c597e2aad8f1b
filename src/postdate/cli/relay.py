"""`postdate relay`: publish the outbox's pending rows until SIGTERM/SIGINT.

One relay per SQLite database; any number on PostgreSQL (each claims its own batch with
``SKIP LOCKED``). See :mod:`postdate.outbox._process` for its metrics and probes.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from postdate._settings import Settings
from postdate.cli._errors import fail
from postdate.cli.common import run_async
from postdate.cli.database import database_failed
from postdate.observe._logs import configure_logging
from postdate.outbox._process import RelayOptions, run_relay_until_signalled


def relay(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            metavar="URL",
            help="the outbox's database (SQLAlchemy async URL); default POSTDATE_SCHEDULE_URL",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="rows published per pass")] = 200,
    poll_interval: Annotated[
        float, typer.Option(min=0.01, help="seconds between passes while nothing is pending")
    ] = 0.5,
    create_tables: Annotated[
        bool,
        typer.Option(
            "--create-tables/--no-create-tables",
            help="create the outbox and schedule tables that are missing first",
        ),
    ] = True,
) -> None:
    """Publish the outbox's pending rows with confirms until SIGTERM/SIGINT (the batch in
    flight is finished); exit 0 on a clean stop. Metrics and probes on
    POSTDATE_METRICS_PORT, as a worker's."""
    settings = Settings.load()
    url = database_url or settings.schedule_url
    if not url:
        fail(
            "no outbox database: give --database-url URL or set POSTDATE_SCHEDULE_URL, "
            "e.g. postgresql+asyncpg://host/db or sqlite+aiosqlite:///orders.db"
        )
    options = RelayOptions(
        url, batch_size=batch_size, poll_interval=poll_interval, create_tables=create_tables
    )
    configure_logging()
    run_async(
        lambda: run_relay_until_signalled(options, settings), failed=partial(database_failed, url)
    )
