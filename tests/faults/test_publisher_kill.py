"""kill -9 of a publisher in the middle of ``send_many``: every command it saw confirmed
is handled (what it did not see confirmed may or may not arrive)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid

import aio_pika

from postdate import Settings, Worker
from postdate.declare import delete_topology
from tests.faults.conftest import ROOT
from tests.faults.harness import Ledger, Tick
from tests.helpers import derive

KILL_AFTER_CONFIRMED = 3000


async def test_kill_9_of_a_publisher_mid_send_many(fault_node: str) -> None:
    prefix = f"f{uuid.uuid4().hex[:8]}"
    settings = Settings.load(prefix=prefix, rabbitmq_url=fault_node, prefetch=1000)
    tick = derive(Tick, f"{prefix}.tick")
    ledger = Ledger()
    app = ledger.app(tick)
    worker = Worker(app, settings, name=f"faults kill worker {prefix}")
    await worker.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.faults.publisher_child",
        fault_node,
        prefix,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        while len(ledger.confirmed) < KILL_AFTER_CONFIRMED:
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line, "the publisher child ended before it was killed"
            if line.startswith(b"confirmed "):
                ledger.confirmed.add(line.split()[1].decode())
        os.kill(child.pid, signal.SIGKILL)  # mid send_many: it publishes without pause
        killed = time.time()
        # What it printed before it died was confirmed too.
        for line in (await child.stdout.read()).splitlines():
            if line.startswith(b"confirmed "):
                ledger.confirmed.add(line.split()[1].decode())
        ledger.sent = len(ledger.confirmed)
        await child.wait()
        await ledger.wait_all(timeout=30)
        report = ledger.report(fault_ended=killed)
        unconfirmed = len({message_id for message_id, _, _ in ledger.handled} - ledger.confirmed)
        print(report.line(f"kill -9 publisher, {unconfirmed} unconfirmed also arrived"))
        assert report.lost == 0, report.line("lost")
        assert report.early == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await worker.stop(grace_period=2)
        connection = await aio_pika.connect(fault_node)
        try:
            await delete_topology(connection, app.topology(prefix, settings.delivery_limit))
        finally:
            await connection.close()
