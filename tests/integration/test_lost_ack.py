"""A delivery whose settle step fails because its channel closed (the ack, or the copy
before it, cut off) gets exactly one outcome line, abandoned with the reason, and the
broker delivers it again."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from postdate import Consumer, Context, Outcome, Publisher, RetryPolicy, Settings, Worker
from postdate.consume import _dispatch as dispatch_module
from postdate.consume._dispatch import Dispatcher
from tests.helpers import Cleanup, Ping, command_for, eventually

ACK_LOST = "ack lost: channel closed, will be redelivered"

Line = MutableMapping[str, Any]


class Permanent(Exception):
    pass


@pytest.fixture
def outcome_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Line]]:
    """Everything structlog logs during the test; the dispatcher's logger is swapped for a
    fresh one, in case an earlier ``configure_logging`` cached it, and any level filter an
    earlier in-process CLI run set (``configure_logging("ERROR")``) is lifted."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            fresh = structlog.get_logger(dispatch_module.__name__)
            monkeypatch.setattr(dispatch_module, "log", fresh)
            yield captured
    finally:
        structlog.configure(wrapper_class=before["wrapper_class"])


def lines_of(captured: list[Line], message_id: str) -> list[Line]:
    """The outcome lines of ``message_id``, in order."""
    return [
        line
        for line in captured
        if line["event"] == "message" and line.get("message_id") == message_id
    ]


@pytest.fixture
async def worker_of() -> AsyncIterator[dict[str, Worker]]:
    """Workers the test starts (by name), stopped at teardown."""
    workers: dict[str, Worker] = {}
    yield workers
    for worker in workers.values():
        await worker.stop(grace_period=2)


async def start(
    workers: dict[str, Worker], app: Consumer, settings: Settings, cleanup: Cleanup, name: str
) -> Worker:
    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    worker = workers[name] = Worker(app, settings, name=name)
    await worker.start()
    return worker


async def test_an_ack_on_a_closed_channel_is_one_abandoned_line_then_redelivered(
    prefix: str,
    settings: Settings,
    publisher: Publisher,
    cleanup: Cleanup,
    connection: AbstractRobustConnection,
    worker_of: dict[str, Worker],
    outcome_lines: list[Line],
    test_name: str,
) -> None:
    cmd = command_for(f"{prefix}.lost_ack")
    app = Consumer()
    runs: list[int] = []
    channel = await connection.channel()

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        runs.append(context.attempt)
        if len(runs) == 1:
            await channel.close()  # the delivery's channel is gone before its ack

    await cleanup.declare(connection, app.topology(settings.prefix, settings.delivery_limit))
    message_id = await publisher.send(cmd(n=1))
    queue = await channel.get_queue(cmd.queue)
    got: list[AbstractIncomingMessage | None] = []

    async def fetched() -> bool:
        got.append(await queue.get(fail=False))  # manual ack: unacked until settled
        return got[-1] is not None

    await eventually(fetched, 10, "the command in its queue")
    dispatcher = Dispatcher(app, publisher)

    assert got[-1] is not None
    outcome = await dispatcher.process(got[-1], cmd.queue)

    assert outcome is Outcome.ABANDONED
    [line] = lines_of(outcome_lines, message_id)  # exactly one outcome line
    assert (line["outcome"], line.get("reason")) == ("abandoned", ACK_LOST)
    assert line["error"]  # what failed the ack
    assert dispatcher.outcomes == {Outcome.ABANDONED: 1}
    # The broker requeued it when the channel closed: a worker handles it.
    worker = await start(worker_of, app, settings, cleanup, f"{test_name} worker")
    await eventually(lambda: worker.outcomes[Outcome.HANDLED] == 1, 15, "the redelivery handled")
    assert runs == [1, 1]
    assert [line["outcome"] for line in lines_of(outcome_lines, message_id)] == [
        "abandoned",
        "handled",
    ]


def close_connection_now(name: str) -> None:
    """Have the broker close the connection ``name`` and wait, blocking the event loop on
    purpose: the worker learns of the close only once the handler has returned, in its
    settle step, as it would had the close come a moment later."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    marker = f'{{"connection_name","{name}"}}'
    [pid] = [line.split("\t", 1)[0] for line in listed.splitlines() if marker in line]
    subprocess.run(
        ["rabbitmqctl", "-q", "close_connection", pid, "test: consuming connection cut"],
        timeout=60,
        check=True,
    )
    time.sleep(0.3)  # the broker's Connection.Close is in the socket before the loop runs


async def test_a_settle_step_cut_by_a_lost_connection_is_one_abandoned_line_then_redelivered(
    prefix: str,
    settings: Settings,
    publisher: Publisher,
    cleanup: Cleanup,
    worker_of: dict[str, Worker],
    outcome_lines: list[Line],
    test_name: str,
) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed: cannot make the broker close a connection")
    cmd = command_for(f"{prefix}.cut_settle")
    app = Consumer()
    runs: list[int] = []
    name = f"{test_name} worker"

    @app.handler(cmd, retries=RetryPolicy(permanent=(Permanent,)))
    async def handle(command: Ping, context: Context) -> None:
        runs.append(context.attempt)
        if len(runs) == 1:
            close_connection_now(name)
            raise Permanent("the poison copy is published, then acked: both after the cut")

    worker = await start(worker_of, app, settings, cleanup, name)
    message_id = await publisher.send(cmd(n=1))
    await eventually(lambda: worker.outcomes[Outcome.HANDLED] == 1, 30, "the redelivery handled")

    first, second = lines_of(outcome_lines, message_id)  # one line per delivery
    assert (first["outcome"], first.get("reason")) == ("abandoned", ACK_LOST)
    assert first["error"]  # what closed the channel
    assert second["outcome"] == "handled"
    assert runs == [1, 1]  # redelivered, not retried: ATTEMPT stays 1
    assert worker.outcomes == {Outcome.ABANDONED: 1, Outcome.HANDLED: 1}
    await asyncio.sleep(0.5)
    assert len(lines_of(outcome_lines, message_id)) == 2
