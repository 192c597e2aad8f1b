"""The consumer app the timing benchmark runs in its own process (`postdate worker`).

Configured by environment: ``TIMING_QUEUE`` (its command queue) and ``TIMING_OUT`` (a
file that gets one line per handled command: its number, then how many seconds after
its exact due time the handler started; negative means early).
"""

from __future__ import annotations

import os
import time

from postdate import Command, Consumer, Context


class Tick(Command, queue=os.environ.get("TIMING_QUEUE", "bench.timing")):
    """A command that carries its exact due time (epoch seconds), as the sender computed it."""

    n: int
    due: float


app = Consumer()
_out = os.open(os.environ.get("TIMING_OUT", os.devnull), os.O_WRONLY | os.O_APPEND | os.O_CREAT)


@app.handler(Tick)
async def record(tick: Tick, context: Context) -> None:
    """Write how late (seconds after the exact due time) this command was handled."""
    os.write(_out, f"{tick.n} {time.time() - tick.due:.6f}\n".encode())
