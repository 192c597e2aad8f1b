"""The `postdate` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from postdate import Publisher, Settings
from postdate.broker._declare import queue_states
from postdate.broker._topology import ladder_topology, poison_queue
from tests.helpers import Cleanup, command_for

ROOT = Path(__file__).resolve().parents[2]
POSTDATE = str(Path(sys.executable).parent / "postdate")


def postdate(settings: Settings | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    if settings is not None:
        environment |= {"RABBITMQ_URL": settings.url, "POSTDATE_PREFIX": settings.prefix}
    return subprocess.run(
        [POSTDATE, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_topology_show_and_export_need_no_broker(tmp_path: Path) -> None:
    shown = postdate(None, "topology", "show", POSTDATE_PREFIX="shop")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("queue    shop.delay.") == 28
    exported = tmp_path / "definitions.json"
    result = postdate(None, "topology", "export", "--output", str(exported), POSTDATE_PREFIX="shop")
    assert result.returncode == 0, result.stderr
    definitions = json.loads(exported.read_text())
    assert {"shop.deliver", "shop.unroutable"} <= {e["name"] for e in definitions["exchanges"]}


def test_bad_setting_is_one_line_naming_it_and_exit_code_2() -> None:
    result = postdate(None, "topology", "show", POSTDATE_PREFIX="1-not-a-prefix")
    assert result.returncode == 2
    assert "prefix" in result.stderr
    assert "Traceback" not in result.stderr


def test_declare_status_and_delete_an_apps_topology(settings: Settings, cleanup: Cleanup) -> None:
    app = "tests.integration.worker_app:app"
    env = {"TEST_QUEUE": f"{settings.prefix}.jobs"}
    try:
        declared = postdate(settings, "topology", "declare", app, **env)
        assert declared.returncode == 0, declared.stderr
        status = postdate(settings, "status", app, "--json", **env)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["ladder"][27] == {
            "queue": f"{settings.prefix}.delay.27",
            "messages": 0,
            "consumers": 0,
        }
        [queue] = report["queues"]
        assert queue["poison"]["messages"] == 0 and report["attention"] == []
        registered = json.loads(postdate(settings, "status", "--json").stdout)["queues"]
        assert [entry["queue"]["queue"] for entry in registered] == [f"{settings.prefix}.jobs"]
        listed = postdate(settings, "poison", "list", f"{settings.prefix}.jobs", **env)
        assert listed.returncode == 0, listed.stderr
        assert "0 parked" in listed.stdout.splitlines()[-1]
    finally:
        deleted = postdate(settings, "topology", "delete", app, "--yes", **env)
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(postdate(settings, "status", "--json").stdout)["queues"] == []
    status = postdate(settings, "status", app, "--all-levels", **env)
    assert f"{settings.prefix}.delay.0" in status.stdout  # the ladder stays
    assert "missing" in status.stdout  # the app's queues are gone


# Safe topology commands: an app's delete keeps the shared ladder, held messages refuse.

APP = "tests.integration.worker_app:app"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def declare_app(settings: Settings, cleanup: Cleanup, queue: str) -> list[str]:
    """Declare the test app's topology on ``queue``; returns its own queues (no ladder)."""
    shown = postdate(settings, "topology", "show", APP, "--json", TEST_QUEUE=queue)
    assert shown.returncode == 0, shown.stderr
    ladder = {spec.name for spec in ladder_topology(settings.prefix).queues}
    own = [q["name"] for q in json.loads(shown.stdout)["queues"] if q["name"] not in ladder]
    for name in own:
        cleanup.track_queue(name)
    declared = postdate(settings, "topology", "declare", APP, TEST_QUEUE=queue)
    assert declared.returncode == 0, declared.stderr
    return own


async def pending_in(connection: AbstractRobustConnection, names: list[str]) -> int | None:
    """Messages in the queues ``names``; None if any of them is missing."""
    states = await queue_states(connection, names)
    if any(state is None for state in states.values()):
        return None
    return sum(state.messages for state in states.values() if state is not None)


async def test_deleting_an_app_keeps_the_ladder_and_its_pending_commands(
    settings: Settings, cleanup: Cleanup, connection: AbstractRobustConnection
) -> None:
    queue = f"{settings.prefix}.jobs"
    own = declare_app(settings, cleanup, queue)
    assert {queue, poison_queue(queue)} <= set(own)
    ladder = [spec.name for spec in ladder_topology(settings.prefix).queues]
    async with Publisher(settings=settings, connection_name="pytest cli delete") as publisher:
        await publisher.send(command_for(queue, name="Job")(n=1), timedelta(hours=1))
    assert await pending_in(connection, ladder) == 1

    deleted = postdate(settings, "topology", "delete", APP, "--yes", "--json", TEST_QUEUE=queue)
    assert deleted.returncode == 0, deleted.stderr
    report = json.loads(deleted.stdout)
    assert report["deleted"] == {"queues": len(own), "exchanges": 0, "messages": 0}
    assert report["ladder_deleted"] is False
    assert all(state is None for state in (await queue_states(connection, own)).values())
    assert await pending_in(connection, ladder) == 1  # another service's command survives

    refused = postdate(settings, "topology", "delete", "--ladder", "--yes")
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert "ladder" in line and "1 message" in line and "--force" in line
    assert await pending_in(connection, ladder) == 1

    forced = postdate(settings, "topology", "delete", "--ladder", "--yes", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    report = json.loads(forced.stdout)
    exchanges = len(ladder_topology(settings.prefix).exchanges)
    assert report["deleted"] == {"queues": len(ladder), "exchanges": exchanges, "messages": 1}
    assert report["ladder_deleted"] is True
    assert all(state is None for state in (await queue_states(connection, ladder)).values())


async def ack(message: AbstractIncomingMessage) -> None:
    await message.ack()


async def test_deleting_an_app_refuses_while_its_queues_hold_messages(
    settings: Settings, cleanup: Cleanup, connection: AbstractRobustConnection
) -> None:
    queue = f"{settings.prefix}.jobs"
    own = declare_app(settings, cleanup, queue)
    channel = await connection.channel()  # publisher confirms: the message is in the queue
    await channel.default_exchange.publish(
        aio_pika.Message(b"parked"), routing_key=poison_queue(queue)
    )
    await channel.close()

    refused = postdate(settings, "topology", "delete", APP, "--yes", TEST_QUEUE=queue)
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert f"{poison_queue(queue)}: 1" in line and "--force" in line
    assert await pending_in(connection, own) == 1  # nothing was deleted

    consuming = await connection.channel()  # a worker still attached: unacked are not counted
    tag = await (await consuming.get_queue(queue)).consume(ack)
    refused = postdate(settings, "topology", "delete", APP, "--yes", TEST_QUEUE=queue)
    assert refused.returncode == 1
    assert f"1 consumer still attached, stop the workers first ({queue}: 1)" in one_line_error(
        refused
    )
    await (await consuming.get_queue(queue)).cancel(tag)
    await consuming.close()

    forced = postdate(settings, "topology", "delete", APP, "--yes", "--force", TEST_QUEUE=queue)
    assert forced.returncode == 0, forced.stderr
    assert f"deleted {len(own)} queues (1 message)" in forced.stdout
    assert "kept the delay ladder" in forced.stdout
    assert await pending_in(connection, own) is None


def test_delete_needs_an_app_or_ladder_and_yes() -> None:
    bare = postdate(None, "topology", "delete", "--yes")
    assert bare.returncode == 2
    assert "MODULE:APP" in one_line_error(bare) and "--ladder" in one_line_error(bare)
    unconfirmed = postdate(None, "topology", "delete", "--ladder")
    assert unconfirmed.returncode == 2
    assert "--yes" in one_line_error(unconfirmed)


def test_export_writes_json_to_stdout() -> None:
    result = postdate(None, "topology", "export", POSTDATE_PREFIX="shop")
    assert result.returncode == 0, result.stderr
    definitions = json.loads(result.stdout)
    assert sum(q["name"].startswith("shop.delay.") for q in definitions["queues"]) == 28


def test_export_into_the_definitions_file_keeps_users_vhosts_and_permissions(
    tmp_path: Path,
) -> None:
    original = json.loads((ROOT / "rabbit" / "definitions.json").read_text())
    assert original["users"] and original["vhosts"] and original["permissions"]
    copy = tmp_path / "definitions.json"
    copy.write_text(json.dumps(original))

    for prefix in ("postdate", "shop"):
        result = postdate(None, "topology", "export", "--output", str(copy), POSTDATE_PREFIX=prefix)
        assert result.returncode == 0, result.stderr
    merged = json.loads(copy.read_text())
    for key in ("users", "vhosts", "permissions"):
        assert merged[key] == original[key]
    for kind in ("exchanges", "queues"):
        names = [entry["name"] for entry in merged[kind]]
        assert len(names) == len(set(names))  # replaced, not duplicated
        assert {entry["name"] for entry in original[kind]} <= set(names)  # app queues kept
        assert "shop.unroutable" in names


def test_export_leaves_a_file_that_is_not_json_untouched(tmp_path: Path) -> None:
    broken = tmp_path / "definitions.json"
    broken.write_text('{"users": [')
    result = postdate(None, "topology", "export", "--output", str(broken))
    assert result.returncode == 2
    assert "not valid JSON" in one_line_error(result)
    assert broken.read_text() == '{"users": ['
