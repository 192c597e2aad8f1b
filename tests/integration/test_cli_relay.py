"""`postdate relay` and the overdue commands of `postdate schedule upcoming` and
`postdate status`: what a schedule without a running relay looks like."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from typer.testing import CliRunner

from postdate import Settings, outbox
from postdate.broker._topology import command_queue_topology
from postdate.cli import app
from postdate.outbox._process import RelayOptions, run_relay
from postdate.schedule import ScheduleStore, make_engine
from tests.helpers import Cleanup, command_for, eventually
from tests.integration.test_cli_schedule import URL_VARIABLES, postdate

pytestmark = pytest.mark.timeout(60)


async def _write(url: str, queue: str, due: datetime) -> str:
    """Create the tables at ``url`` and write one command for ``queue`` due at ``due``."""
    engine = make_engine(url)
    try:
        store = ScheduleStore(async_sessionmaker(engine, expire_on_commit=False))
        await store.create_tables()
        async with store.sessions() as session, session.begin():
            return await outbox.schedule(session, command_for(queue)(n=1), at=due)
    finally:
        await engine.dispose()


def test_without_a_database_url_the_relay_says_which_to_set_and_exits_2() -> None:
    result = postdate("relay")
    assert result.returncode == 2
    assert result.stderr.startswith("error: no outbox database") and result.stderr.count("\n") == 1
    assert "POSTDATE_SCHEDULE_URL" in result.stderr and "--database-url" in result.stderr


def test_a_command_due_and_not_published_is_overdue(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'schedule.db'}"
    due = datetime.now(UTC) - timedelta(seconds=1)
    late = asyncio.run(_write(url, f"{settings.prefix}.jobs", due))
    asyncio.run(_write(url, f"{settings.prefix}.jobs", due + timedelta(hours=1)))
    for variable in URL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    runner = CliRunner()

    listed = runner.invoke(app, ["schedule", "upcoming", "--json", "--db", url])
    assert listed.exit_code == 0, listed.output
    upcoming = json.loads(listed.stdout)
    assert [(row["message_id"], row["overdue"]) for row in upcoming["upcoming"]][:1] == [
        (late, True)
    ]
    assert [row["overdue"] for row in upcoming["upcoming"]] == [True, False]
    assert upcoming["overdue"] == 1
    table = runner.invoke(app, ["schedule", "upcoming", "--db", url])
    assert "1 overdue command (due, not published: is a relay running?)" in table.stdout

    monkeypatch.setenv("RABBITMQ_URL", settings.url)
    monkeypatch.setenv("POSTDATE_PREFIX", settings.prefix)
    monkeypatch.setenv("POSTDATE_SCHEDULE_URL", url)
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["schedule"] == {"overdue": 1, "error": None}
    text = runner.invoke(app, ["status"])
    assert "schedule: 1 overdue command (due, not published: is a relay running?)" in text.stdout

    monkeypatch.setenv("POSTDATE_SCHEDULE_URL", f"sqlite+aiosqlite:///{tmp_path / 'none.db'}")
    missing = json.loads(runner.invoke(app, ["status", "--json"]).stdout)["schedule"]
    assert missing["overdue"] is None and "postdate schedule init" in missing["error"]


async def test_the_relay_process_publishes_counts_and_stops(
    tmp_path: Path, settings: Settings, cleanup: Cleanup
) -> None:
    queue = f"{settings.prefix}.jobs"
    cleanup.track(command_queue_topology(settings.prefix, queue))
    url = f"sqlite+aiosqlite:///{tmp_path / 'schedule.db'}"
    due = datetime.now(UTC) + timedelta(hours=1)
    message_id = await _write(url, queue, due)
    stop = asyncio.Event()
    running = asyncio.create_task(
        run_relay(stop, RelayOptions(url, poll_interval=0.05, create_tables=False), settings)
    )

    async def published() -> bool:
        engine = make_engine(url)
        try:
            store = ScheduleStore(async_sessionmaker(engine, expire_on_commit=False))
            return (await store.timeline(message_id)).published_at is not None
        finally:
            await engine.dispose()

    await eventually(published, 20, "the row published", interval=0.2)
    stop.set()
    relay = await asyncio.wait_for(running, 10)
    assert (relay.published, relay.failed) == (1, 0)
