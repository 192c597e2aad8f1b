"""A broker restart while thousands of commands are pending at several ladder levels:
nothing lost, nothing early, and nothing held longer than the downtime plus the bound
that rabbit/advanced.config sets (``dead_letter_worker_publisher_confirm_timeout``).

``FAULT_RESTARTS`` sets how many restarts (default 2: one early, while many commands move
between the lowest levels, one later), ``FAULT_WAIT`` how long to wait for the commands
after each (with ``POSTDATE_FAULT_ADVANCED`` naming a config without the bound, a long
wait shows how long the broker's default holds them). On a failure the queues are kept
and the test says where the missing commands are.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import timedelta

import aio_pika
import pytest

from postdate import Publisher
from tests.faults.conftest import ctl
from tests.faults.harness import running_worker, whereabouts

COMMANDS = 3000
DELAYS = (2.0, 40.0)  # ladder levels 0-5
DOWNTIME = 10.0
# The dead-letter worker retries an unconfirmed transfer after 5 s (advanced.config); a
# held command is forwarded within a retry or two after the broker recovered (measured:
# 10.0-13.7 s over 5 restarts; 180 s and more with the broker's default).
BOUND = 20.0
RESTARTS = int(os.environ.get("FAULT_RESTARTS", "2"))
# How long to wait for every command after the restart (longer to see a stall end).
WAIT = float(os.environ.get("FAULT_WAIT", str(DELAYS[1] + BOUND + 30)))


@pytest.mark.parametrize("stop_after", [4.0, 12.0][:RESTARTS] + [8.0] * max(0, RESTARTS - 2))
async def test_broker_restart_loses_nothing_and_stalls_no_longer_than_the_bound(
    fault_node: str, stop_after: float
) -> None:
    rng = random.Random()
    async with running_worker(fault_node, "restart", prefetch=2000, concurrency=64) as run:
        ledger = run.ledger
        async with Publisher(settings=run.settings, connection_name=f"faults {run.prefix}") as pub:
            items = [
                (run.tick(n=n), timedelta(seconds=rng.uniform(*DELAYS))) for n in range(COMMANDS)
            ]
            sent_at = time.time()
            ledger.sent = len(items)
            ledger.confirmed.update(await pub.send_many(items))
        await asyncio.sleep(max(0.0, sent_at + stop_after - time.time()))
        await asyncio.to_thread(ctl, "stop_app")
        stopped = time.time()
        await asyncio.sleep(DOWNTIME)
        await asyncio.to_thread(ctl, "start_app")
        back = time.time()
        await ledger.wait_all(timeout=WAIT)
        report = ledger.report(fault_ended=back)
        print(report.line(f"restart after {stop_after:.0f}s, down {back - stopped:.1f}s"))
        if report.lost:
            run.keep_queues = True
            pytest.fail(await _whereabouts(fault_node, run.prefix, run.tick.queue, report.lost))
    assert report.early == 0
    assert report.beyond_max <= BOUND, report.line("held too long")


async def _whereabouts(node_url: str, prefix: str, queue: str, lost: int) -> str:
    """Where the missing commands are, for the failure message."""
    connection = await aio_pika.connect(node_url)
    try:
        ready = await whereabouts(connection, prefix, queue)
    finally:
        await connection.close()
    listed = await asyncio.to_thread(ctl, "list_queues", "name", "messages", "messages_ready")
    return (
        f"{lost} confirmed commands never handled (queues kept under prefix {prefix}); "
        f"ready by passive declare: {ready}; rabbitmqctl list_queues (name, messages, "
        "ready):\n" + "\n".join(line for line in listed.splitlines() if prefix in line)
    )
