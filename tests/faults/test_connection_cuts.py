"""Connections cut 20 times while commands are published and consumed through a proxy:
every send either returns (confirmed) or raises a typed error, and every confirmed
command is handled."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import timedelta

import aio_pika

from postdate import PostdateError, Publisher, Settings, Worker
from postdate.declare import delete_topology
from tests.faults.harness import Ledger, Tick
from tests.faults.proxy import CuttingProxy
from tests.helpers import broker_address, derive

CUTS = 20
CUT_EVERY = 0.5
SENDERS = 8
DELAYS = (0.0, 3.0)


async def test_twenty_connection_cuts_during_publishing_and_consuming(fault_node: str) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}"
    proxy = CuttingProxy(*broker_address(fault_node))
    port = await proxy.start()
    through_proxy = f"amqp://guest:guest@127.0.0.1:{port}/"
    settings = Settings.load(
        prefix=prefix, rabbitmq_url=through_proxy, publish_timeout=10, prefetch=500
    )
    tick = derive(Tick, f"{prefix}.tick")
    ledger = Ledger()
    app = ledger.app(tick)
    worker = Worker(app, settings, name=f"faults cuts worker {prefix}")
    await worker.start()
    failures: list[str] = []
    untyped: list[BaseException] = []
    sending = asyncio.Event()
    sending.set()
    rng = random.Random()
    try:
        async with Publisher(settings=settings, connection_name=f"faults {prefix}") as pub:

            async def sender(first: int) -> None:
                n = first
                while sending.is_set():
                    ledger.sent += 1
                    try:
                        delay = timedelta(seconds=rng.uniform(*DELAYS))
                        ledger.confirmed.add(await pub.send(tick(n=n), delay))
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
        cuts_ended = time.time()
        await ledger.wait_all(timeout=DELAYS[1] + 30)
        report = ledger.report(fault_ended=cuts_ended)
        print(report.line(f"{proxy.cuts} cuts, {len(failures)} typed send failures"))
        assert not untyped, untyped[:3]
        assert report.lost == 0, report.line("lost")
        assert report.early == 0
        assert report.confirmed > CUTS * 10  # publishing went on between the cuts
    finally:
        await worker.stop(grace_period=2)
        await proxy.close()
        connection = await aio_pika.connect(fault_node)
        try:
            await delete_topology(connection, app.topology(prefix, settings.delivery_limit))
        finally:
            await connection.close()
