"""The one error path of the `postdate` commands, and when a scheduled command is overdue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiormq
import pytest
import typer
from typer.testing import CliRunner

from postdate._errors import BrokerUnavailable
from postdate.cli._errors import CliTyper, Failure, describe, fail
from postdate.schedule import Scheduled

app = CliTyper()


@app.command("raise")
def _raise(what: str) -> None:
    errors: dict[str, Exception] = {
        "postdate": BrokerUnavailable("cannot reach RabbitMQ\n at localhost"),
        "check": Failure("no parked message x", 1),
        "usage": typer.BadParameter("--delay is not like 30s"),
        "refused": aiormq.exceptions.ChannelAccessRefused("no"),
    }
    if what == "fail":
        fail("say   which\nmessages")
    if what == "bug":
        raise RuntimeError("a bug")
    raise errors[what]


@app.command("fine")
def _fine() -> None:
    typer.echo("fine")


@pytest.mark.parametrize(
    ("what", "code", "line"),
    [
        ("postdate", 2, "error: cannot reach RabbitMQ at localhost"),
        ("check", 1, "error: no parked message x"),
        ("usage", 2, "error: --delay is not like 30s"),
        ("refused", 2, "error: the broker refused: <ChannelAccessRefused"),
        ("fail", 2, "error: say which messages"),
    ],
)
def test_every_expected_error_is_one_line_and_its_exit_code(
    what: str, code: int, line: str
) -> None:
    result = CliRunner().invoke(app, ["raise", what])
    assert result.exit_code == code
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr


def test_a_bug_keeps_its_traceback_and_a_command_runs_as_before() -> None:
    result = CliRunner().invoke(app, ["raise", "bug"])
    assert isinstance(result.exception, RuntimeError)
    assert describe(RuntimeError("a bug")) is None
    assert CliRunner().invoke(app, ["fine"]).stdout == "fine\n"


def test_lost_connections_say_so() -> None:
    failure = describe(ConnectionResetError("reset"))
    assert failure is not None and failure.code == 2
    assert str(failure).startswith("the connection to the broker was lost")


def _scheduled(due: datetime, published: datetime | None) -> Scheduled:
    return Scheduled("m", "Expire", "q", None, due, due, published, 0)


def test_overdue_is_due_past_the_grace_and_not_published() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert _scheduled(now - timedelta(seconds=2), None).overdue_at(now)
    assert not _scheduled(now - timedelta(seconds=2), now).overdue_at(now)
    assert not _scheduled(now - timedelta(milliseconds=500), None).overdue_at(now)
    assert not _scheduled(now + timedelta(hours=1), None).overdue_at(now)
    assert _scheduled(datetime.now(UTC) - timedelta(minutes=1), None).overdue
