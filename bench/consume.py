"""Consume benchmark: a worker with a no-op handler vs a raw aio-pika consume-and-ack
loop at the same prefetch, and end-to-end lateness of delayed commands through the worker.

Run: ``python -m bench.consume`` (``make bench``); writes bench/results/consume.json.
Ratios, not absolute rates, are the figures to compare: the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from tests.helpers import Cleanup

from bench.common import server_version, write_results
from postdate import Command, Consumer, Context, Outcome, Publisher, Settings, Worker
from postdate.declare import declare_topology
from postdate.logs import configure_logging
from postdate.topology import command_queue_topology

RESULTS = Path(__file__).parent / "results" / "consume.json"
MESSAGES = 10_000
PREFETCH = 64
ROUNDS = 5
LATENESS_MESSAGES = 2_000


def make_command(queue: str) -> type[Command]:
    """A fresh ``Tick`` command class (a number and a 64-byte payload) on ``queue``."""

    class Tick(Command, queue=queue):
        n: int
        payload: str = "x" * 64

    return Tick


async def fill(publisher: Publisher, command: type[Command], count: int) -> None:
    """Publish ``count`` immediately due ``command``s with ``send_many``."""
    await publisher.send_many((command(n=n), 0) for n in range(count))  # type: ignore[call-arg]


async def raw_consume(connection: AbstractRobustConnection, queue_name: str, count: int) -> float:
    """Messages per second of a bare consume-and-ack loop at the same prefetch."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.get_queue(queue_name, ensure=False)
    done = asyncio.Event()
    seen = 0
    started = time.perf_counter()

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal seen
        await message.ack()
        seen += 1
        if seen == count:
            done.set()

    await queue.consume(on_message)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - started
    await channel.close()
    return count / elapsed


async def worker_consume(settings: Settings, app: Consumer, count: int) -> float:
    """Messages per second a ``Worker`` running ``app`` handles ``count`` messages at.

    Raises:
        TimeoutError: the worker has not handled ``count`` messages within 300 s.
    """
    worker = Worker(app, settings, name="bench consume worker")
    await worker.start()  # declaring and connecting are not part of the rate
    started, already = time.perf_counter(), worker.outcomes[Outcome.HANDLED]
    deadline = time.monotonic() + 300
    while worker.outcomes[Outcome.HANDLED] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker handled {worker.outcomes} of {count} in 300 s")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    await worker.stop(grace_period=1)
    return (count - already) / elapsed


async def lateness(settings: Settings, publisher: Publisher, prefix: str) -> dict[str, object]:
    """How late ``LATENESS_MESSAGES`` commands due in 1-5 s reach a worker's handler:
    percentiles of (handled - due), and how many came early."""
    command = make_command(f"{prefix}.late")
    observed: list[float] = []
    app = Consumer()

    @app.handler(command)
    async def record(cmd: Command, context: Context) -> None:
        observed.append((datetime.now(UTC) - context.due_at).total_seconds())

    worker = Worker(app, settings, name="bench lateness worker")
    await worker.start()
    delays = [random.uniform(1, 5) for _ in range(LATENESS_MESSAGES)]
    await publisher.send_many((command(n=i), d) for i, d in enumerate(delays))  # type: ignore[call-arg]
    deadline = time.monotonic() + 60
    while len(observed) < LATENESS_MESSAGES and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await worker.stop(grace_period=1)
    ordered = sorted(observed)
    return {
        "messages": LATENESS_MESSAGES,
        "delivered": len(observed),
        "delays_s": "uniform 1-5 with sub-second parts",
        "p50_s": round(ordered[len(ordered) // 2], 4),
        "p99_s": round(ordered[int(len(ordered) * 0.99) - 1], 4),
        "max_s": round(ordered[-1], 4),
        "early_count": sum(1 for value in observed if value < 0),
    }


async def main() -> None:
    """Run the consume benchmark against the broker and write ``RESULTS``."""
    configure_logging(level="WARNING", json=True)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings.load(prefix=prefix, prefetch=PREFETCH, concurrency=PREFETCH)
    cleanup = Cleanup(url=settings.url, prefix=prefix, connection_name="bench consume")
    command = make_command(f"{prefix}.tick")
    app = Consumer()

    @app.handler(command)
    async def noop(cmd: Command, context: Context) -> None:
        return None

    topology = cleanup.track(app.topology(prefix, settings.delivery_limit))
    raw_rates: list[float] = []
    worker_rates: list[float] = []
    try:
        async with Publisher(settings=settings, connection_name="bench consume publisher") as pub:
            connection = await aio_pika.connect_robust(settings.url)
            await declare_topology(connection, topology)  # queue exists before the first fill
            for _ in range(ROUNDS):
                await fill(pub, command, MESSAGES)
                worker_rates.append(await worker_consume(settings, app, MESSAGES))
                await fill(pub, command, MESSAGES)
                raw_rates.append(await raw_consume(connection, command.queue, MESSAGES))
            cleanup.track(command_queue_topology(prefix, f"{prefix}.late"))
            late = await lateness(settings, pub, prefix)
            version = server_version(connection)
            await connection.close()
    finally:
        await cleanup.run()
    raw, worker = statistics.median(raw_rates), statistics.median(worker_rates)
    result = {
        "benchmark": "consume",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rabbitmq": version,
        "messages_per_round": MESSAGES,
        "prefetch": PREFETCH,
        "rounds": ROUNDS,
        "raw_aio_pika_consume_ack_per_s": [round(rate) for rate in raw_rates],
        "worker_noop_per_s": [round(rate) for rate in worker_rates],
        "worker_vs_raw_ratio": round(worker / raw, 3),
        "target_ratio": 0.8,
        "lateness_through_worker": late,
        "note": (
            "same run, alternating rounds, medians; worker logs at WARNING (per-message "
            "outcome lines off) and runs decode, hold check, handler call, metrics and ack "
            "per message; raw loop only acks"
        ),
    }
    write_results(RESULTS, result)


if __name__ == "__main__":
    asyncio.run(main())
