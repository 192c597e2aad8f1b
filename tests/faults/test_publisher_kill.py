"""kill -9 of a publisher in the middle of ``send_many``: every command it saw confirmed
is handled (what it did not see confirmed may or may not arrive)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from tests.faults.conftest import ROOT
from tests.faults.harness import running_worker

KILL_AFTER_CONFIRMED = 3000


async def test_kill_9_of_a_publisher_mid_send_many(fault_node: str) -> None:
    async with running_worker(fault_node, "kill", prefetch=1000) as run:
        ledger = run.ledger
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.faults.publisher_child",
            fault_node,
            run.prefix,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        try:
            while len(ledger.confirmed) < KILL_AFTER_CONFIRMED:
                line = await asyncio.wait_for(child.stdout.readline(), 30)
                assert line, "the publisher child ended before it was killed"
                ledger.confirmed.update(_confirmed([line]))
            os.kill(child.pid, signal.SIGKILL)  # mid send_many: it publishes without pause
            killed = time.time()
            # What it printed before it died was confirmed too.
            ledger.confirmed.update(_confirmed((await child.stdout.read()).splitlines()))
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
        ledger.sent = len(ledger.confirmed)
        await ledger.wait_all(timeout=30)
    report = ledger.report(fault_ended=killed)
    unconfirmed = len({message_id for message_id, _, _ in ledger.handled} - ledger.confirmed)
    print(report.line(f"kill -9 publisher, {unconfirmed} unconfirmed also arrived"))
    assert report.lost == 0, report.line("lost")
    assert report.early == 0


def _confirmed(lines: list[bytes]) -> set[str]:
    return {line.split()[1].decode() for line in lines if line.startswith(b"confirmed ")}
