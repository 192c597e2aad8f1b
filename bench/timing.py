"""Timing benchmark: how early or late commands reach a worker's handler under load.

Run: ``python -m bench.timing`` (``make bench``); writes bench/results/timing.json.

The worker runs in its own process through the CLI (``postdate worker``), with default
settings and logging (INFO, JSON lines to a file); each command carries its exact due
time, and the handler writes how long after it it started. Three scenarios, one worker:

- steady: ``STEADY_RATE`` sends per second for ``STEADY_SECONDS`` (concurrent ``send``
  calls, as a busy service makes them), delays uniform in 1-10 s with sub-second parts;
- burst: ``BURST`` commands due within the same second, 10 s ahead, published by one
  ``send_many``;
- burst_without_ladder: the same, due within the coming second, so that none of them
  goes through the ladder: publish, command queue and worker at once, with no head start.

CPU seconds per wall second and per command of the broker, the worker and this process
(publisher) are sampled over each scenario, with how busy the whole machine was: they
say which of them limits it.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection
from tests.helpers import Cleanup

from bench.common import percentiles, server_version, write_results
from postdate import Command, Consumer, Context, Publisher, Settings
from postdate.broker._declare import queue_states
from postdate.delay import _ladder as ladder
from postdate.delay._routing import LADDER_LEAD

RESULTS = Path(__file__).parent / "results" / "timing.json"
STEADY_RATE = int(os.environ.get("BENCH_TIMING_RATE", "500"))
STEADY_SECONDS = float(os.environ.get("BENCH_TIMING_SECONDS", "60"))
STEADY_DELAYS = (1.0, 10.0)
BURST = int(os.environ.get("BENCH_TIMING_BURST", "20000"))
BURST_DUE_IN = 10.0  # seconds from the send_many call to the start of the due second
DRAIN_SECONDS = 60.0  # after the last due time, how long to wait for the rest


def tick_class(queue: str) -> type[Command]:
    """The bench app's ``Tick`` (bench/timing_app.py) on ``queue``, for the sending side."""

    class Tick(Command, queue=queue, name="Tick"):
        n: int
        due: float

    return Tick


@dataclass
class WorkerProcess:
    """``postdate worker bench.timing_app:app`` in its own process."""

    prefix: str
    queue: str
    out: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    _seen: dict[int, float] = field(default_factory=dict)
    _read_up_to: int = 0

    def start(self) -> None:
        """Start the worker; its output goes to ``log``."""
        env = {
            **os.environ,
            "POSTDATE_PREFIX": self.prefix,
            "TIMING_QUEUE": self.queue,
            "TIMING_OUT": str(self.out),
        }
        postdate = Path(sys.executable).parent / "postdate"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(postdate), "worker", "bench.timing_app:app"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).parent.parent,
            )

    def stop(self) -> None:
        """SIGTERM the worker and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def handled(self) -> dict[int, float]:
        """Lateness (seconds after the exact due time) per command number handled so far.

        Reads only what the worker appended since the last call (whole lines): the bench
        shares the cores with what it measures, and must not take them from it.
        """
        if not self.out.exists():
            return self._seen
        with self.out.open("rb") as out:
            out.seek(self._read_up_to)
            chunk = out.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._read_up_to += len(whole)
        for line in whole.decode().splitlines():
            n, late = line.split()
            self._seen[int(n)] = float(late)
        return self._seen


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    """The pid of the RabbitMQ node at the default port (the oldest beam.smp)."""
    found = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True)
    return int(found.stdout.split()[0]) if found.stdout.strip() else None


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot (/proc/stat)."""
    ticks = [int(word) for word in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


class CpuMeter:
    """CPU seconds per wall second of named processes between start and stop, and how
    busy the whole machine was (1.0: every core, all the time)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.started = time.monotonic()
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.host_before = host_cpu_ticks()

    def stop(self, commands: int) -> dict[str, Any]:
        """Per process since start: CPU seconds per wall second, and CPU microseconds per
        command (of ``commands``); the machine's busy fraction."""
        wall = time.monotonic() - self.started
        used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        (busy_now, total_now), (busy_then, total_then) = host_cpu_ticks(), self.host_before
        busy, total = busy_now - busy_then, total_now - total_then
        return {
            "cpu_per_wall_s": {name: round(seconds / wall, 2) for name, seconds in used.items()},
            "cpu_us_per_command": {
                name: round(seconds / commands * 1e6) for name, seconds in used.items()
            },
            "host_cpu_busy": round(busy / total, 2) if total else None,
        }


def lateness_summary(late: list[float]) -> dict[str, Any]:
    """Percentiles of lateness in seconds, and how many were early (before the exact due)."""
    return {
        **percentiles(late, digits=4),
        "early_count": sum(1 for value in late if value < 0),
        "earliest_s": round(min(late), 6) if late else None,
    }


async def wait_handled(worker: WorkerProcess, numbers: range, until: float) -> dict[int, float]:
    """Lateness of each of ``numbers`` once all are handled, or what was by ``until``."""
    while True:
        seen = {n: late for n, late in worker.handled().items() if n in numbers}
        if len(seen) == len(numbers) or time.time() > until:
            return seen
        await asyncio.sleep(0.5)


async def steady(
    publisher: Publisher, tick: type[Command], worker: WorkerProcess
) -> dict[str, Any]:
    """``STEADY_RATE`` concurrent sends per second for ``STEADY_SECONDS``."""
    total = int(STEADY_RATE * STEADY_SECONDS)
    numbers = range(total)
    sends: list[asyncio.Task[str]] = []
    hops: dict[int, int] = {}
    started = time.monotonic()
    for n in numbers:
        pause = started + n / STEADY_RATE - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        delay = random.uniform(*STEADY_DELAYS)
        hops[n] = ladder_hops(delay)
        due = datetime.now(UTC) + timedelta(seconds=delay)
        task = asyncio.create_task(publisher.send(tick(n=n, due=due.timestamp()), at=due))  # type: ignore[call-arg]
        sends.append(task)
    results = await asyncio.gather(*sends, return_exceptions=True)
    failures = sum(1 for result in results if isinstance(result, BaseException))
    sent_rate = total / (time.monotonic() - started)
    seen = await wait_handled(worker, numbers, time.time() + STEADY_DELAYS[1] + DRAIN_SECONDS)
    return {
        "commands": total,
        "rate_per_s": STEADY_RATE,
        "achieved_send_rate_per_s": round(sent_rate),
        "delays_s": f"uniform {STEADY_DELAYS[0]:g}-{STEADY_DELAYS[1]:g}",
        "send_failures": failures,
        "handled": len(seen),
        "lateness_s": lateness_summary(list(seen.values())),
        "lateness_by_ladder_hops_s": {
            hop_count: percentiles([late for n, late in seen.items() if hops[n] == hop_count], 4)
            for hop_count in sorted(set(hops.values()))
        },
    }


def ladder_hops(delay: float) -> int:
    """How many ladder levels a command sent with ``delay`` seconds visits."""
    return len(ladder.levels(max(0, math.floor(delay - LADDER_LEAD.total_seconds()))))


async def burst(
    publisher: Publisher,
    tick: type[Command],
    worker: WorkerProcess,
    first: int,
    due_in: float = BURST_DUE_IN,
) -> dict[str, Any]:
    """``BURST`` commands due within one second, ``due_in`` s from now, published by one
    ``send_many``. With ``due_in=0`` nothing goes through the ladder (the lead covers
    the second): what is left is the publish, the command queue and the worker."""
    numbers = range(first, first + BURST)
    second = datetime.now(UTC) + timedelta(seconds=due_in)
    dues = [second + timedelta(seconds=random.random()) for _ in numbers]
    items = [(tick(n=n, due=due.timestamp()), due) for n, due in zip(numbers, dues, strict=True)]  # type: ignore[call-arg]
    started = time.monotonic()
    await publisher.send_many(items)
    send_many_s = time.monotonic() - started
    seen = await wait_handled(worker, numbers, time.time() + due_in + 1 + DRAIN_SECONDS)
    return {
        "commands": BURST,
        "due_within_s": 1,
        "due_after_s": due_in,
        "send_many_s": round(send_many_s, 3),
        "handled": len(seen),
        "lateness_s": lateness_summary(list(seen.values())),
    }


async def wait_consuming(connection: AbstractConnection, queue: str, worker: WorkerProcess) -> None:
    """Wait until the worker process consumes ``queue``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = (await queue_states(connection, [queue]))[queue]
        if state is not None and state.consumers > 0:
            return
        if worker.process is not None and worker.process.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.process.returncode}: see {worker.log}")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"worker did not consume {queue} within 60 s: see {worker.log}")


async def main() -> None:
    """Run both scenarios against the broker and write ``RESULTS``."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    queue = f"{prefix}.timing"
    settings = Settings.load(prefix=prefix)
    tick = tick_class(queue)
    app = Consumer()

    @app.handler(tick)
    async def unused(command: Command, context: Context) -> None:  # topology only
        return None

    cleanup = Cleanup(url=settings.url, prefix=prefix, connection_name="bench timing cleanup")
    cleanup.track(app.topology(prefix, settings.delivery_limit))
    scratch = Path(tempfile.mkdtemp(prefix="postdate-timing-"))
    worker = WorkerProcess(prefix, queue, scratch / "handled.txt", scratch / "worker.log")
    try:
        connection = await aio_pika.connect(
            settings.url, client_properties={"connection_name": "bench timing"}
        )
        version = server_version(connection)
        worker.start()
        await wait_consuming(connection, queue, worker)
        assert worker.process is not None
        pids = {"broker": broker_pid(), "worker": worker.process.pid, "publisher": os.getpid()}
        async with Publisher(settings=settings, connection_name="bench timing publisher") as pub:
            meter = CpuMeter(pids)
            steady_result = await steady(pub, tick, worker)
            steady_result.update(meter.stop(steady_result["commands"]))
            meter = CpuMeter(pids)
            burst_result = await burst(pub, tick, worker, first=steady_result["commands"])
            burst_result.update(meter.stop(BURST))
            meter = CpuMeter(pids)
            floor = await burst(
                pub, tick, worker, first=steady_result["commands"] + BURST, due_in=0
            )
            floor.update(meter.stop(BURST))
        await connection.close()
    finally:
        worker.stop()
        await cleanup.run()
    write_results(
        RESULTS,
        {
            "benchmark": "timing",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "rabbitmq": version,
            "cpus": os.cpu_count(),
            "worker": "own process, `postdate worker`, default settings and logging "
            "(INFO, JSON lines to a file)",
            "steady": steady_result,
            "burst": burst_result,
            "burst_without_ladder": floor,
            "goals": {
                "steady_p99_s": 0.1,
                "early_count": 0,
                "burst_max_s": 5.0,
                "burst_p99_s": 4.0,
            },
            "worker_log": str(worker.log),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
