"""Consume benchmark: a worker with a no-op handler, run in a process of its own through
the real CLI (``postdate worker bench.consume_app:app``, default logging: INFO, JSON lines
on stderr, here a file), vs a raw aio-pika consume-and-ack loop at the same prefetch; and
the same worker at WARNING, which tells what its per-message outcome line costs.

Run: ``python -m bench.consume`` (``make bench``); writes bench/results/consume.json.
Ratios, not absolute rates, are the figures to compare: the machine is shared and noisy.
Lateness of delayed commands is measured by bench/timing.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from tests.helpers import Cleanup

from bench.common import server_version, write_results
from bench.consume_app import make_command
from postdate import Command, Consumer, Context, Publisher, Settings
from postdate.declare import declare_topology
from postdate.logs import configure_logging

ROOT = Path(__file__).resolve().parents[1]
POSTDATE = Path(sys.executable).parent / "postdate"
RESULTS = Path(__file__).parent / "results" / "consume.json"
MESSAGES = 10_000
PREFETCH = 64
ROUNDS = 5
ROUND_TIMEOUT = 300.0


@dataclass(frozen=True)
class Round:
    """One measured round: messages per second, and CPU time per message (µs) of the
    process that consumed, both from the first message's start to the last one's end."""

    rate: float
    cpu_us: float
    outcome_lines: int = 0


async def fill(publisher: Publisher, command: type[Command], count: int) -> None:
    """Publish ``count`` immediately due ``command``s with ``send_many``."""
    await publisher.send_many((command(n=n), 0) for n in range(count))  # type: ignore[call-arg]


async def raw_consume(connection: AbstractRobustConnection, queue_name: str, count: int) -> Round:
    """A bare consume-and-ack loop at the same prefetch, in this process."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.get_queue(queue_name, ensure=False)
    done = asyncio.Event()
    seen = 0
    first = first_cpu = 0.0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal seen, first, first_cpu
        if seen == 0:
            first, first_cpu = time.time(), time.process_time()
        await message.ack()
        seen += 1
        if seen == count:
            done.set()

    await queue.consume(on_message)
    await asyncio.wait_for(done.wait(), ROUND_TIMEOUT)
    elapsed, cpu = time.time() - first, time.process_time() - first_cpu
    await channel.close()
    return Round(count / elapsed, cpu / count * 1e6)


def worker_env(
    settings: Settings, queue: str, marker: Path, log_level: str | None = None
) -> dict[str, str]:
    """The worker process's environment: the bench's broker and prefix, the same prefetch
    (and as many handlers), no metrics port, logging at its default unless ``log_level``."""
    env = {
        **os.environ,
        "RABBITMQ_URL": settings.url,
        "POSTDATE_PREFIX": settings.prefix,
        "POSTDATE_PREFETCH": str(PREFETCH),
        "POSTDATE_CONCURRENCY": str(PREFETCH),
        "BENCH_QUEUE": queue,
        "BENCH_COUNT": str(MESSAGES),
        "BENCH_MARKER": str(marker),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("POSTDATE_METRICS_PORT", None)
    if log_level is not None:
        env["BENCH_LOG_LEVEL"] = log_level
    return env


async def worker_consume(
    settings: Settings, queue: str, run_dir: Path, name: str, log_level: str | None = None
) -> Round:
    """``postdate worker bench.consume_app:app`` in a process of its own, its stderr in
    ``run_dir``/``name``.log; timed by its handler from the first message handled to the
    ``MESSAGES``-th (start-up is not part of the rate), then stopped with SIGTERM.

    Raises:
        RuntimeError: the worker exited early, or did not handle ``MESSAGES`` in time.
    """
    marker = run_dir / f"{name}.done"
    log_path = run_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            str(POSTDATE),
            "worker",
            "bench.consume_app:app",
            cwd=ROOT,
            env=worker_env(settings, queue, marker, log_level),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + ROUND_TIMEOUT
        while not marker.exists():
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not finish; see {log_path}")
            await asyncio.sleep(0.05)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
    first, last, count, cpu_first, cpu_last = (float(word) for word in marker.read_text().split())
    return Round(
        int(count) / (last - first), (cpu_last - cpu_first) / count * 1e6, outcome_lines(log_path)
    )


def outcome_lines(log_path: Path) -> int:
    """How many ``handled`` outcome lines the worker wrote (every line must be whole JSON)."""
    with log_path.open("rb") as lines:
        events = (json.loads(line) for line in lines)
        return sum(1 for e in events if e["event"] == "message" and e["outcome"] == "handled")


async def main() -> None:
    """Run the consume benchmark against the broker and write ``RESULTS``."""
    configure_logging(level="WARNING", json=True)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings.load(prefix=prefix, prefetch=PREFETCH, concurrency=PREFETCH)
    cleanup = Cleanup(url=settings.url, prefix=prefix, connection_name="bench consume")
    command = make_command(f"{prefix}.tick")
    app = Consumer()  # the worker process's app declares the same topology

    @app.handler(command)
    async def noop(cmd: Command, context: Context) -> None:
        return None

    topology = cleanup.track(app.topology(prefix, settings.delivery_limit))
    raw: list[Round] = []
    worker: list[Round] = []
    quiet: list[Round] = []  # the worker at WARNING: no outcome lines
    try:
        async with Publisher(settings=settings, connection_name="bench consume publisher") as pub:
            connection = await aio_pika.connect_robust(settings.url)
            await declare_topology(connection, topology)  # queue exists before the first fill
            with tempfile.TemporaryDirectory(prefix="bench-consume-") as run_dir:
                run = Path(run_dir)
                for number in range(ROUNDS):
                    await fill(pub, command, MESSAGES)
                    name = f"info-{number}"
                    worker.append(await worker_consume(settings, command.queue, run, name))
                    await fill(pub, command, MESSAGES)
                    raw.append(await raw_consume(connection, command.queue, MESSAGES))
                    await fill(pub, command, MESSAGES)
                    name = f"warning-{number}"
                    quiet.append(
                        await worker_consume(settings, command.queue, run, name, "WARNING")
                    )
            version = server_version(connection)
            await connection.close()
    finally:
        await cleanup.run()
    raw_rate = statistics.median(r.rate for r in raw)
    worker_rate = statistics.median(r.rate for r in worker)
    quiet_rate = statistics.median(r.rate for r in quiet)
    line_cpu = statistics.median(r.cpu_us for r in worker) - statistics.median(
        r.cpu_us for r in quiet
    )
    result = {
        "benchmark": "consume",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rabbitmq": version,
        "messages_per_round": MESSAGES,
        "prefetch": PREFETCH,
        "rounds": ROUNDS,
        "raw_aio_pika_consume_ack_per_s": [round(r.rate) for r in raw],
        "worker_noop_per_s": [round(r.rate) for r in worker],
        "raw_cpu_us_per_message": [round(r.cpu_us, 1) for r in raw],
        "worker_cpu_us_per_message": [round(r.cpu_us, 1) for r in worker],
        "worker_outcome_lines_per_round": [r.outcome_lines for r in worker],
        "worker_vs_raw_ratio": round(worker_rate / raw_rate, 3),
        "target_ratio": 0.8,
        "worker_at_warning_noop_per_s": [round(r.rate) for r in quiet],
        "worker_at_warning_cpu_us_per_message": [round(r.cpu_us, 1) for r in quiet],
        "worker_at_warning_outcome_lines_per_round": [r.outcome_lines for r in quiet],
        "worker_at_warning_vs_raw_ratio": round(quiet_rate / raw_rate, 3),
        "outcome_line_cpu_us": round(line_cpu, 1),
        "note": (
            "same run, alternating rounds, medians. The worker runs in a process of its own "
            "through the CLI (postdate worker bench.consume_app:app) with default logging: "
            "INFO, one JSON outcome line per message on stderr, redirected to a file. It "
            "decodes, checks the hold, calls the no-op handler, counts metrics, logs and acks "
            "each message; the raw loop (in the bench process) only acks. A third series runs "
            "the same worker with logging at WARNING (no outcome lines): outcome_line_cpu_us "
            "is the difference of the medians of worker CPU time per message. Rates and CPU "
            "time run from the first message handled to the last; start-up is excluded."
        ),
    }
    write_results(RESULTS, result)


if __name__ == "__main__":
    asyncio.run(main())
