"""Choosing a backend against a real broker, and switching between them losing nothing.

``auto`` runs here (our broker has no plugin: it must pick the ladder and leave nothing
behind); the rest needs a broker with the delayed-message plugin at
``POSTDATE_PLUGIN_URL`` and is skipped without one.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from aio_pika.abc import AbstractRobustConnection

from postdate._errors import DelayError
from postdate._settings import BackendName, Settings
from postdate.broker._declare import exchange_exists, queue_exists
from postdate.broker._topology import Names, command_queue_topology
from postdate.delay._backend import probe_name
from postdate.delay._plugin import MAX_DELAY_MS
from postdate.delay._routing import LADDER_LEAD
from postdate.publish._publisher import Publisher
from tests.helpers import Cleanup, Collector, command_for, queue_depth

EARLIEST_MS = LADDER_LEAD // timedelta(milliseconds=1) + 1000


@pytest.mark.parametrize(
    ("backend", "picked"), [("ladder", BackendName.LADDER), ("plugin", BackendName.PLUGIN)]
)
async def test_auto_picks_the_plugin_only_where_the_broker_has_it_and_leaves_no_probe(
    settings: Settings,
    cleanup: Cleanup,
    connection: AbstractRobustConnection,
    test_name: str,
    picked: BackendName,
) -> None:
    # backend=ladder: our broker, without the plugin; plugin: the one at POSTDATE_PLUGIN_URL.
    auto = settings.model_copy(update={"backend": BackendName.AUTO})
    queue = f"{settings.prefix}.auto"
    async with Publisher(settings=auto, connection_name=test_name) as publisher:
        assert publisher.backend.name is picked
        cleanup.track(command_queue_topology(settings.prefix, queue))
        await publisher.send(command_for(queue)(n=1))  # the publisher's channel still works
        assert await queue_depth(connection, queue) == 1

    assert not await exchange_exists(connection, probe_name(settings.prefix))
    has_delayed = await exchange_exists(connection, Names(settings.prefix).delayed)
    assert has_delayed is (picked is BackendName.PLUGIN)


@pytest.mark.parametrize("backend", ["plugin"])
@pytest.mark.parametrize(
    ("before", "after"),
    [(BackendName.LADDER, BackendName.PLUGIN), (BackendName.PLUGIN, BackendName.LADDER)],
)
async def test_commands_pending_on_one_backend_arrive_after_a_switch_to_the_other(
    settings: Settings,
    connection: AbstractRobustConnection,
    cleanup: Cleanup,
    test_name: str,
    before: BackendName,
    after: BackendName,
) -> None:
    queue = f"{settings.prefix}.switch"
    await cleanup.declare(connection, command_queue_topology(settings.prefix, queue))
    command = command_for(queue)
    sent: list[str] = []
    for backend, delay in ((before, 4), (after, 2)):
        switched = settings.model_copy(update={"backend": backend})
        async with Publisher(settings=switched, connection_name=test_name) as publisher:
            assert publisher.backend.name is backend
            sent.append(await publisher.send(command(n=delay), timedelta(seconds=delay)))

    async with Collector(connection, queue, 2) as collector:
        received = await collector.wait(timeout=12)

    assert [r.message.message_id for r in received] == sent[::-1]  # each once, due order
    for r in received:
        due = (r.message.headers or {})["x-postdate-due"]
        assert isinstance(due, int) and r.arrived_ms >= due - EARLIEST_MS


@pytest.mark.parametrize("backend", ["plugin"])
async def test_the_plugin_refuses_a_delay_it_would_deliver_at_once(
    publisher: Publisher, cleanup: Cleanup, connection: AbstractRobustConnection, prefix: str
) -> None:
    queue = f"{prefix}.too_far"
    cleanup.track(command_queue_topology(prefix, queue))
    too_far = timedelta(milliseconds=MAX_DELAY_MS) + LADDER_LEAD + timedelta(seconds=5)
    command = command_for(queue)

    with pytest.raises(DelayError, match="ladder"):
        await publisher.send_many([(command(n=1), timedelta(seconds=1)), (command(n=2), too_far)])

    assert not await queue_exists(connection, queue)  # nothing published, nothing declared
