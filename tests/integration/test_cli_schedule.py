"""`postdate schedule` on a real database (SQLite and PostgreSQL).

Most runs are in-process (typer's runner, the same `app` the `postdate` script runs) to
stay fast on both backends; a few run the real `postdate` script in a subprocess, as
test_cli.py does, for what only a user's run shows (the exit code of a missing setting,
no traceback).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from typer.testing import CliRunner, Result

from postdate import outbox
from postdate._clock import to_epoch_ms
from postdate.cli import app
from postdate.cli import database as schedule_database
from postdate.schedule import ScheduleStore, history_table, make_engine
from tests.helpers import command_for
from tests.integration.orders_fixtures import Database
from tests.integration.test_cli import POSTDATE, ROOT

Expire = command_for("shop.expire", "Expire")
Remind = command_for("shop.remind", "Remind")
URL_VARIABLES = ("POSTDATE_SCHEDULE_URL", "DATABASE_URL")

Cli = Callable[..., Result]


@dataclass(frozen=True)
class Seeded:
    """The commands in the schedule: two upcoming for order-1, one for order-2 (of another
    type and queue), one handled (after a retry) for order-3."""

    soon: str
    later: str
    other: str
    handled: str


async def _seed(database: Database) -> Seeded:
    engine = database.engine()
    try:
        store = ScheduleStore(async_sessionmaker(engine, expire_on_commit=False))
        await store.create_tables()
        now = datetime.now(UTC)
        async with store.sessions() as session, session.begin():
            soon, later = await outbox.schedule_many(
                session,
                [(Expire(n=1), timedelta(hours=1)), (Expire(n=2), timedelta(days=2))],
                correlation_id="order-1",
            )
            other = await outbox.schedule(
                session, Remind(n=3), delay=timedelta(hours=3), correlation_id="order-2"
            )
            handled = await outbox.schedule(session, Expire(n=4), correlation_id="order-3")
            rows = [
                _history(handled, 1, "retried", "RuntimeError: payment down", now, minutes=2),
                _history(handled, 2, "handled", "", now, minutes=1),
            ]
            await session.execute(insert(history_table), rows)
        return Seeded(soon, later, other, handled)
    finally:
        await engine.dispose()


def _history(
    message_id: str, attempt: int, outcome: str, detail: str, now: datetime, minutes: int
) -> dict[str, Any]:
    at = now - timedelta(minutes=minutes)
    return {
        "message_id": message_id,
        "queue": Expire.queue,
        "type": "Expire",
        "correlation_id": "order-3",
        "attempt": attempt,
        "outcome": outcome,
        "detail": detail,
        "at": at,
        "at_ms": to_epoch_ms(at),
        "worker": "worker-a",
    }


@pytest.fixture(name="seeded")
async def seeded_fixture(database: Database) -> Seeded:
    return await _seed(database)


@pytest.fixture(name="cli")
def cli_fixture(database: Database, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`postdate schedule ARGS --db URL`, in-process; on PostgreSQL in the test's schema."""
    for variable in URL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if database.schema is not None:
        search_path = {"server_settings": {"search_path": database.schema}}

        def in_schema(url: str, **kwargs: Any) -> Any:
            connect_args = {**kwargs.pop("connect_args", {}), **search_path}
            return make_engine(url, connect_args=connect_args, **kwargs)

        monkeypatch.setattr(schedule_database, "make_engine", in_schema)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, ["schedule", *args, "--db", database.url])

    return run


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _one_line_error(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr


def test_upcoming_lists_whats_to_come_soonest_first(cli: Cli, seeded: Seeded) -> None:
    shown = cli("upcoming")
    assert shown.exit_code == 0, shown.output
    header, *rows, footer = shown.stdout.splitlines()
    assert (
        " ".join(header.split())
        == "due (UTC) type message id correlation id published overdue attempts"
    )
    assert [row.split()[3] for row in rows] == [seeded.soon, seeded.other, seeded.later]
    assert rows[0].split()[2:] == ["Expire", seeded.soon, "order-1", "no", "no", "0"]
    assert footer == "3 upcoming"

    listed = _json(cli("upcoming", "--json", "-c", "order-1", "--limit", "1"))
    assert listed["limit"] == 1
    [item] = listed["upcoming"]
    assert set(item) == {
        "message_id", "type", "queue", "correlation_id", "due_at", "scheduled_at",
        "published_at", "attempts", "overdue",
    }  # fmt: skip
    assert (item["message_id"], item["type"], item["queue"]) == (
        seeded.soon,
        "Expire",
        Expire.queue,
    )
    assert item["published_at"] is None and item["attempts"] == 0 and item["overdue"] is False
    assert listed["overdue"] == 0
    assert datetime.fromisoformat(item["due_at"]).tzinfo is not None

    def ids(*args: str) -> list[str]:
        return [row["message_id"] for row in _json(cli("upcoming", "--json", *args))["upcoming"]]

    assert ids("--type", "Remind") == [seeded.other]
    assert ids("--queue", Expire.queue) == [seeded.soon, seeded.later]
    in_a_day = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert ids("--after", in_a_day) == [seeded.later]  # naive: taken as UTC
    assert ids("--before", in_a_day) == [seeded.soon, seeded.other]
    _one_line_error(cli("upcoming", "--after", "tomorrow"), 2, "--after", "ISO 8601")


def test_history_newest_first_and_overview_pivot(cli: Cli, seeded: Seeded) -> None:
    shown = cli("history")
    assert shown.exit_code == 0, shown.output
    header, handled, retried, footer = shown.stdout.splitlines()
    assert header.split()[:3] == ["at", "(UTC)", "outcome"]
    assert handled.split()[2:] == ["handled", "Expire", seeded.handled, "2", "-", "worker-a"]
    assert "retried" in retried and "RuntimeError: payment down" in retried
    assert footer == "2 outcomes"
    entries = _json(cli("history", "--json", "--outcome", "retried"))["history"]
    assert [(e["message_id"], e["attempt"], e["worker"]) for e in entries] == [
        (seeded.handled, 1, "worker-a")
    ]
    assert entries[0]["detail"] == "RuntimeError: payment down"
    assert _json(cli("history", "--json", "-c", "order-1"))["history"] == []

    overview = _json(cli("overview", "--json", "--bucket", "day"))
    assert overview["bucket"] == "day"
    totals: dict[tuple[str, str], int] = {}
    for row in overview["rows"]:
        assert datetime.fromisoformat(row["start"]).time() == datetime.min.time()
        for outcome, count in row["counts"].items():
            totals[row["type"], outcome] = totals.get((row["type"], outcome), 0) + count
    assert totals == {
        ("Expire", "scheduled"): 2,
        ("Expire", "handled"): 1,
        ("Expire", "retried"): 1,
        ("Remind", "scheduled"): 1,
    }
    table = cli("overview", "--type", "Remind")
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == ["hour", "(UTC)", "type", "scheduled"]
    assert row.split()[2:] == ["Remind", "1"]


def test_timeline_of_one_command_and_of_an_unknown_id(cli: Cli, seeded: Seeded) -> None:
    shown = cli("timeline", seeded.handled)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert f"message id:     {seeded.handled}" in lines
    assert "final:          handled" in lines and "cancelled:      -" in lines
    assert lines[-2].split()[2:5] == ["retried", "1", "worker-a"]
    assert lines[-1].split()[2:] == ["handled", "2", "worker-a", "-"]

    found = _json(cli("timeline", seeded.soon, "--json"))
    assert found["message_id"] == seeded.soon and found["correlation_id"] == "order-1"
    assert found["final"] is None and found["outcomes"] == []
    assert found["cancelled_at"] is None and found["published_at"] is None

    _one_line_error(cli("timeline", "nosuch"), 1)
    assert cli("timeline", "nosuch").stderr == "error: no scheduled command 'nosuch'\n"


def test_cancel_by_id_says_per_id_and_exits_1_when_too_late_or_unknown(
    cli: Cli, seeded: Seeded
) -> None:
    result = cli("cancel", seeded.soon, seeded.handled, "nosuch", "--reason", "order picked up")
    _one_line_error(result, 1, "too late for " + seeded.handled, "no scheduled command 'nosuch'")
    assert result.stdout.splitlines() == [
        f"{seeded.soon}  cancelled",
        f"{seeded.handled}  too-late  already handled",
        "nosuch  unknown  not in the outbox, no outcome recorded (--unscheduled cancels it anyway)",
        "cancelled 1, already cancelled 0, too late 1, unknown 1",
    ]
    again = cli("cancel", seeded.soon, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {
        "cancelled": 0,
        "already_cancelled": 1,
        "too_late": 0,
        "unknown": 0,
        "results": [
            {
                "message_id": seeded.soon,
                "status": "already-cancelled",
                "detail": "",
                "unconfirmed": [],
            }
        ],
    }
    timeline = _json(cli("timeline", seeded.soon, "--json"))
    assert timeline["cancel_reason"] == "order picked up" and timeline["cancelled_at"]
    upcoming = _json(cli("upcoming", "--json"))["upcoming"]
    assert [row["message_id"] for row in upcoming] == [seeded.other, seeded.later]

    unscheduled = cli("cancel", "sent-directly", "--unscheduled")
    assert unscheduled.exit_code == 0, unscheduled.output
    assert unscheduled.stdout.splitlines()[-1] == "cancelled 1, already cancelled 0, too late 0"


def test_cancel_by_filter_and_what_it_refuses(cli: Cli, seeded: Seeded) -> None:
    _one_line_error(cli("cancel"), 2, "say what to cancel")
    _one_line_error(cli("cancel", seeded.soon, "-c", "order-1"), 2, "not both")
    _one_line_error(cli("cancel", "-c", "order-1", "--unscheduled"), 2, "--unscheduled")

    result = cli("cancel", "--correlation-id", "order-1")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{seeded.soon}  cancelled",
        f"{seeded.later}  cancelled",
        "cancelled 2, already cancelled 0, too late 0",
    ]
    none_left = _json(cli("cancel", "-c", "order-1", "--json"))
    assert none_left["cancelled"] == 0 and none_left["results"] == []
    by_type = _json(cli("cancel", "--type", "Remind", "--json"))
    assert [(r["message_id"], r["status"]) for r in by_type["results"]] == [
        (seeded.other, "cancelled")
    ]
    assert _json(cli("upcoming", "--json"))["upcoming"] == []


def test_reschedule_moves_a_command_under_a_new_id(cli: Cli, seeded: Seeded) -> None:
    moved = _json(cli("reschedule", seeded.soon, "--delay", "2h", "--json"))
    assert moved["message_id"] == seeded.soon and moved["rescheduled_as"] != seeded.soon
    due = datetime.fromisoformat(moved["due_at"]) - datetime.now(UTC)
    assert timedelta(hours=1, minutes=59) < due <= timedelta(hours=2)
    old = _json(cli("timeline", seeded.soon, "--json"))
    assert old["cancel_reason"] == f"rescheduled as {moved['rescheduled_as']}"
    new = _json(cli("timeline", moved["rescheduled_as"], "--json"))
    assert new["correlation_id"] == "order-1" and new["type"] == "Expire"

    _one_line_error(cli("reschedule", seeded.soon, "--delay", "1h"), 1, "was cancelled")
    _one_line_error(cli("reschedule", seeded.handled, "--delay", "1h"), 1, "already handled")
    _one_line_error(cli("reschedule", "nosuch", "--delay", "1h"), 1, "no scheduled command")
    _one_line_error(cli("reschedule", seeded.later, "--delay", "2 hours"), 2, "--delay")
    _one_line_error(cli("reschedule", seeded.later), 2, "--delay", "--at")

    text = cli("reschedule", seeded.later, "--at", "2030-01-02T03:04:05")
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith(f"rescheduled {seeded.later} as ")
    assert text.stdout.endswith(", due 2030-01-02 03:04:05 UTC\n")


def test_trim_deletes_what_ended_long_ago(cli: Cli, seeded: Seeded) -> None:
    assert _json(cli("trim", "--older-than", "30d", "--json")) == {
        "history": 0,
        "outbox": 0,
        "cancels": 0,
    }
    trimmed = cli("trim", "--older-than", "30s")
    assert trimmed.exit_code == 0, trimmed.output
    assert trimmed.stdout == (
        "trimmed 2 history rows, 0 outbox rows and 0 cancels older than 30s\n"
    )
    assert _json(cli("history", "--json"))["history"] == []
    _one_line_error(cli("trim", "--older-than", "0s"), 2, "positive")
    _one_line_error(cli("trim", "--older-than", "a month"), 2, "--older-than")


def test_missing_tables_say_run_init(cli: Cli) -> None:
    _one_line_error(cli("upcoming"), 2, "postdate schedule init")
    created = cli("init")
    assert created.exit_code == 0, created.output
    assert _json(cli("upcoming", "--json"))["upcoming"] == []


def test_an_unreachable_database_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+asyncpg://postdate:secret@127.0.0.1:1/nowhere"
    result = CliRunner().invoke(app, ["schedule", "history", "--db", url])
    _one_line_error(result, 2, "cannot reach the schedule database", "postdate:***@")
    assert "secret" not in result.output


# --- the real `postdate` script --------------------------------------------------------------


def postdate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in URL_VARIABLES}
    environment |= {"PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [POSTDATE, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_without_a_database_url_it_says_which_to_set_and_exits_2() -> None:
    result = postdate("schedule", "upcoming")
    assert result.returncode == 2
    assert (
        result.stderr.startswith("error: no schedule database") and "Traceback" not in result.stderr
    )
    assert "POSTDATE_SCHEDULE_URL" in result.stderr and result.stderr.count("\n") == 1


def test_the_script_reads_the_url_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'schedule.db'}"
    seeded = asyncio.run(_seed(Database("sqlite", url)))
    listed = postdate("schedule", "upcoming", "--json", POSTDATE_SCHEDULE_URL=url)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["upcoming"]) == 3
    late = postdate("schedule", "cancel", seeded.handled, DATABASE_URL=url)
    assert late.returncode == 1
    assert late.stderr == f"error: too late for {seeded.handled}\n"
