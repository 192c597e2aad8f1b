"""The no-op app bench/consume.py runs in a worker process of its own, through the CLI:
``postdate worker bench.consume_app:app``.

Configured by environment: ``BENCH_QUEUE`` (the command queue), ``BENCH_COUNT`` (how
many handled messages make a round) and ``BENCH_MARKER`` (a file that gets, once
``BENCH_COUNT`` messages were handled, ``<first start> <last end> <count> <first cpu>
<last cpu>``: ``time.time()`` and ``time.process_time()`` seconds). The handler only
counts: what is measured is the worker. ``BENCH_LOG_LEVEL`` (unset: the CLI's default,
INFO) configures logging at that level first, so that the CLI's own configuration does
nothing: at WARNING the per-message outcome lines are left out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from postdate import Command, Consumer, Context
from postdate.observe._logs import configure_logging


def make_command(queue: str) -> type[Command]:
    """A fresh ``Tick`` command class (a number and a 64-byte payload) on ``queue``."""

    class Tick(Command, queue=queue):
        n: int
        payload: str = "x" * 64

    return Tick


if os.environ.get("BENCH_LOG_LEVEL"):
    configure_logging(os.environ["BENCH_LOG_LEVEL"])

QUEUE = os.environ.get("BENCH_QUEUE", "bench.tick")
COUNT = int(os.environ.get("BENCH_COUNT", "10000"))
MARKER = Path(os.environ.get("BENCH_MARKER", os.devnull))

Tick = make_command(QUEUE)
app = Consumer()
_first = _first_cpu = 0.0
_handled = 0


@app.handler(Tick)
async def noop(command: Command, context: Context) -> None:
    """Count the message; the ``COUNT``-th writes the round's timing to ``MARKER``."""
    global _first, _first_cpu, _handled
    if _handled == 0:
        _first, _first_cpu = time.time(), time.process_time()
    _handled += 1
    if _handled == COUNT:
        timing = f"{_first} {time.time()} {_handled} {_first_cpu} {time.process_time()}"
        written = MARKER.with_suffix(".tmp")
        written.write_text(timing + "\n")
        written.replace(MARKER)  # the bench sees the whole line or nothing
