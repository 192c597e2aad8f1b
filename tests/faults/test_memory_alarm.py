"""A memory alarm while ``send_many`` publishes: the publisher waits (the broker blocks
it), nothing is lost, and the commands are not late by the time they were blocked."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from postdate import Publisher
from tests.faults.conftest import ctl
from tests.faults.harness import running_worker

COMMANDS = 5000
DELAY = timedelta(seconds=3)
ALARM_SECONDS = 8.0
RAISE = "rabbit_alarm:set_alarm({{resource_limit, memory, node()}, []})."
CLEAR = "rabbit_alarm:clear_alarm({resource_limit, memory, node()})."


async def test_memory_alarm_during_send_many(fault_node: str) -> None:
    async with running_worker(fault_node, "alarm", prefetch=2000, concurrency=64) as run:
        ledger = run.ledger
        async with Publisher(settings=run.settings, connection_name=f"faults {run.prefix}") as pub:

            async def alarm() -> float:
                await asyncio.sleep(0.05)
                await asyncio.to_thread(ctl, "eval", RAISE)
                await asyncio.sleep(ALARM_SECONDS)
                await asyncio.to_thread(ctl, "eval", CLEAR)
                return time.time()

            alarm_task = asyncio.create_task(alarm())
            items = [(run.tick(n=n), DELAY) for n in range(COMMANDS)]
            ledger.sent = len(items)
            started = time.time()
            ledger.confirmed.update(await pub.send_many(items))
            blocked_for = time.time() - started
            cleared = await alarm_task
        await ledger.wait_all(timeout=ALARM_SECONDS + DELAY.total_seconds() + 30)
    report = ledger.report(fault_ended=cleared)
    print(report.line(f"memory alarm {ALARM_SECONDS:.0f}s, send_many took {blocked_for:.1f}s"))
    assert report.lost == 0
    assert report.early == 0
    # Each command is planned when it is written: those written after the block waited
    # for it and go out at once after it (the worker then works through them); only
    # those written but not yet taken when it blocked (at most PIPELINE_WINDOW) start their
    # delay after it. Planned all before the block, the median was 3.1 s here.
    assert report.beyond_p50 <= 1.5, report.line("late")
