"""The demo, shrunk: it sets itself up, settles every reminder (the picked-up orders' ones
acked as cancelled by the worker, from the schedule store), checks its table against the
database, prints two reminders' timelines, exits 0, and leaves no broker objects behind."""

from __future__ import annotations

import re
from collections.abc import Sequence

import aiormq
import pytest
from aio_pika.abc import AbstractRobustConnection

from orders.demo import ACKED_CANCELLED, CANCELLED, REFUNDED, RETRIED, Demo, parse


def timeline(lines: Sequence[str], title: str) -> list[str]:
    """The event names of the timeline printed under ``title`` (e.g. ``(picked up)``):
    ``scheduled``, ``published``, ``cancel``, ``due``, ``-> <outcome>``, oldest first."""
    [start] = [n for n, line in enumerate(lines) if "timeline of order" in line and title in line]
    events = []
    for line in lines[start + 1 :]:
        found = re.match(r"^    \d\d:\d\d:\d\d\.\d{3} UTC  (-> \w+|\w+)", line)
        if found is None:
            break
        events.append(found.group(1))
    return events


async def test_demo_runs_green_and_cleans_up(
    rabbitmq: str,
    connection: AbstractRobustConnection,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RABBITMQ_URL", rabbitmq)
    demo = Demo(parse(["--orders", "8", "--hold", "2", "--fail-rate", "0.3", "--seed", "4"]))
    try:
        code = await demo.run()
    finally:
        await demo.close()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "table matches the database" in out
    assert "with the schedule store" in out
    lines = out.splitlines()
    # 3 of the 8 orders are picked up, each before its hold ends: the worker acks their
    # reminders as cancelled without calling the handler.
    cancelled_rows = [line for line in lines if f"completed  {CANCELLED}" in line]
    assert cancelled_rows, out
    assert any(line.endswith(ACKED_CANCELLED) for line in cancelled_rows), out
    assert re.search(r"^  worker: cancelled [1-9]", out, re.MULTILINE), out
    assert REFUNDED in out or RETRIED in out

    picked = timeline(lines, "(picked up)")
    assert {"scheduled", "published", "cancel", "due", "-> cancelled"} <= set(picked), out
    assert picked.count("-> cancelled") == 1
    assert not [event for event in picked if event.startswith("-> ") and event != "-> cancelled"]
    assert picked.index("scheduled") < picked.index("published") < picked.index("-> cancelled")
    assert picked.index("cancel") < picked.index("-> cancelled")
    [cancel_line] = [line for line in lines if re.match(r"^    .* UTC  cancel ", line)]
    assert cancel_line.endswith("picked up")

    expired = timeline(lines, "(expired, refunded)")
    assert "cancel" not in expired
    assert expired[-1] == "-> handled", out
    assert expired.index("due") < expired.index("-> handled")  # never early
    assert set(expired) <= {"scheduled", "published", "due", "-> retried", "-> handled"}

    channel = await connection.channel()
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await channel.declare_queue(demo.app.queues()[0], passive=True)
