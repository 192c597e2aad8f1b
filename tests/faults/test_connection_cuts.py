"""Connections cut 20 times while commands are published and consumed through a proxy:
every send either returns (confirmed) or raises a typed error, and every confirmed
command is handled."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta

from postdate import PostdateError, Publisher
from tests.faults.harness import Run, running_worker
from tests.faults.proxy import CuttingProxy
from tests.helpers import broker_address

CUTS = 20
CUT_EVERY = 0.5
SENDERS = 8
DELAYS = (0.0, 3.0)


async def test_twenty_connection_cuts_during_publishing_and_consuming(fault_node: str) -> None:
    proxy = CuttingProxy(*broker_address(fault_node))
    through_proxy = f"amqp://guest:guest@127.0.0.1:{await proxy.start()}/"
    failures: list[str] = []
    untyped: list[BaseException] = []
    try:
        async with running_worker(
            fault_node, "cuts", worker_url=through_proxy, publish_timeout=10, prefetch=500
        ) as run:
            await _publish_while_cutting(run, proxy, failures, untyped)
            cuts_ended = time.time()
            await run.ledger.wait_all(timeout=DELAYS[1] + 30)
    finally:
        await proxy.close()
    report = run.ledger.report(fault_ended=cuts_ended)
    print(report.line(f"{proxy.cuts} cuts, {len(failures)} typed send failures"))
    assert not untyped, untyped[:3]
    assert report.lost == 0, report.line("lost")
    assert report.early == 0
    assert report.confirmed > CUTS * 10  # publishing went on between the cuts


async def _publish_while_cutting(
    run: Run, proxy: CuttingProxy, failures: list[str], untyped: list[BaseException]
) -> None:
    """``SENDERS`` tasks send one command after another while the proxy cuts ``CUTS``
    times; every send is confirmed (in the ledger) or fails (in ``failures``)."""
    sending = asyncio.Event()
    sending.set()
    rng = random.Random()
    async with Publisher(settings=run.settings, connection_name=f"faults {run.prefix}") as pub:

        async def sender(n: int) -> None:
            while sending.is_set():
                run.ledger.sent += 1
                try:
                    delay = timedelta(seconds=rng.uniform(*DELAYS))
                    run.ledger.confirmed.add(await pub.send(run.tick(n=n), delay))
                except PostdateError as error:
                    failures.append(type(error).__name__)
                except Exception as error:  # anything else breaks the promise
                    untyped.append(error)
                n += SENDERS

        senders = [asyncio.create_task(sender(first)) for first in range(SENDERS)]
        for _ in range(CUTS):
            await asyncio.sleep(CUT_EVERY)
            proxy.cut()
        sending.clear()
        await asyncio.gather(*senders)
