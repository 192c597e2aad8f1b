"""A consumer app for the fault tests, run in its own process by `postdate worker`.

Configured by environment: TEST_QUEUE (the command queue), TEST_JOURNAL (a file that
gets "start <n>" and "end <n>" lines), TEST_SLEEP (seconds each handler takes),
TEST_KILL_ON (the job number whose handler kills the process).
"""

from __future__ import annotations

import asyncio
import os

from postdate import Consumer, Context
from tests.helpers import command_for

Job = command_for(os.environ.get("TEST_QUEUE", "postdate-tests.jobs"), name="Job")
JOURNAL = os.environ.get("TEST_JOURNAL", os.devnull)
SLEEP = float(os.environ.get("TEST_SLEEP", "0.01"))
KILL_ON = int(os.environ.get("TEST_KILL_ON", "-1"))  # this job kills the process

app = Consumer()


def journal(line: str) -> None:
    descriptor = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{line} {os.getpid()}\n".encode())
    finally:
        os.close(descriptor)


@app.handler(Job)
async def handle(command: object, context: Context) -> None:
    number = command.n  # type: ignore[attr-defined]
    journal(f"start {number}")
    if number == KILL_ON:
        os._exit(3)  # a poison pill: the process dies before it can settle anything
    await asyncio.sleep(SLEEP)
    journal(f"end {number}")
