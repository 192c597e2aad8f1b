"""Consume benchmark: a worker with a no-op handler, run in a process of its own through
the real CLI (``postdate worker bench.consume_app:app``, default logging: INFO, JSON lines
on stderr, here a file), vs a raw aio-pika consume-and-ack loop at the same prefetch; and
the same worker at WARNING, which tells what its per-message outcome line costs; and the same
worker with a schedule store (``POSTDATE_SCHEDULE_URL``: an SQLite file, and PostgreSQL
when reachable), no cancels pending, which checks every delivery against the tombstones
and writes every outcome behind (``postdate_history``): each such round counts the rows
the store got for it, and fails unless they are as many as the messages handled.

Run: ``python -m bench.consume`` (``make bench``); writes bench/results/consume.json.
Knobs: ``BENCH_CONSUME_MESSAGES`` (per round, 10000), ``BENCH_CONSUME_ROUNDS`` (5),
``BENCH_CONSUME_STORES`` (``sqlite,postgresql``; empty: no schedule-store series). The
PostgreSQL series runs in a database of its own, created and dropped on the server that
``DATABASE_URL`` names when it is PostgreSQL, else ``postgres@127.0.0.1:5432``; it is
skipped when that is not reachable.
Ratios, not absolute rates, are the figures to compare: the machine is shared and noisy.
Lateness of delayed commands is measured by bench/timing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from tests.helpers import Cleanup

from bench.common import server_version, write_results
from bench.consume_app import make_command
from postdate import Command, Consumer, Context, Publisher, Settings
from postdate.broker._declare import declare_topology
from postdate.observe._logs import configure_logging
from postdate.schedule import ScheduleStore, history_table, make_engine

ROOT = Path(__file__).resolve().parents[1]
POSTDATE = Path(sys.executable).parent / "postdate"
RESULTS = Path(__file__).parent / "results" / "consume.json"
MESSAGES = int(os.environ.get("BENCH_CONSUME_MESSAGES", "10000"))
PREFETCH = 64
ROUNDS = int(os.environ.get("BENCH_CONSUME_ROUNDS", "5"))
ROUND_TIMEOUT = 300.0
STORES = [
    name.strip()
    for name in os.environ.get("BENCH_CONSUME_STORES", "sqlite,postgresql").split(",")
    if name.strip()
]
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
SCHEDULE_TARGET_RATIO = 0.9


@dataclass(frozen=True)
class Round:
    """One measured round: messages per second, and CPU time per message (µs) of the
    process that consumed, both from the first message's start to the last one's end."""

    rate: float
    cpu_us: float
    outcome_lines: int = 0
    history_rows: int = 0  # rows the schedule store got for the round's messages


@dataclass
class StoreSeries:
    """The worker with a schedule store on one database: its rounds, or why it was skipped."""

    database: str
    url: str = ""
    store: ScheduleStore | None = None
    skipped: str = ""
    version: str = ""
    rounds: list[Round] = field(default_factory=list)


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
    settings: Settings,
    queue: str,
    marker: Path,
    log_level: str | None = None,
    schedule_url: str | None = None,
) -> dict[str, str]:
    """The worker process's environment: the bench's broker and prefix, the same prefetch
    (and as many handlers), no metrics port, logging at its default unless ``log_level``,
    a schedule store only with ``schedule_url``."""
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
    env.pop("POSTDATE_SCHEDULE_URL", None)
    if log_level is not None:
        env["BENCH_LOG_LEVEL"] = log_level
    if schedule_url is not None:
        env["POSTDATE_SCHEDULE_URL"] = schedule_url
    return env


async def worker_consume(
    settings: Settings,
    queue: str,
    run_dir: Path,
    name: str,
    log_level: str | None = None,
    schedule_url: str | None = None,
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
            env=worker_env(settings, queue, marker, log_level, schedule_url),
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


async def handled_rows(store: ScheduleStore, queue: str) -> int:
    """How many ``handled`` outcomes of ``queue`` the store holds."""
    query = (
        select(func.count())
        .select_from(history_table)
        .where(history_table.c.queue == queue, history_table.c.outcome == "handled")
    )
    async with store.sessions() as session:
        return int((await session.execute(query)).scalar_one())


async def store_consume(
    settings: Settings, queue: str, run_dir: Path, name: str, series: StoreSeries
) -> Round:
    """``worker_consume`` with ``series``'s schedule store; the round's ``history_rows`` are
    the ``handled`` rows the store got while it ran (the worker writes what is left when
    it stops, so they are counted after it exited).

    Raises:
        RuntimeError: as ``worker_consume``, or the store did not get one row per message.
    """
    assert series.store is not None
    before = await handled_rows(series.store, queue)
    measured = await worker_consume(settings, queue, run_dir, name, schedule_url=series.url)
    rows = await handled_rows(series.store, queue) - before
    if rows != MESSAGES:
        raise RuntimeError(f"{name}: {rows} history rows for {MESSAGES} messages handled")
    return replace(measured, history_rows=rows)


@contextlib.asynccontextmanager
async def sqlite_series(run_dir: Path) -> AsyncIterator[StoreSeries]:
    """A schedule store on a fresh SQLite file in ``run_dir``."""
    url = f"sqlite+aiosqlite:///{run_dir / 'schedule.db'}"
    store = ScheduleStore.from_url(url)
    try:
        await store.create_tables()
        async with store.sessions() as session:
            version = str((await session.execute(text("select sqlite_version()"))).scalar())
        yield StoreSeries("sqlite", url, store, version=version)
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def postgres_series() -> AsyncIterator[StoreSeries]:
    """A schedule store in a PostgreSQL database of its own (dropped afterwards); a
    skipped series when the server is not reachable."""
    env = os.environ.get("DATABASE_URL", "")
    server = make_url(env if env.startswith("postgresql") else DEFAULT_POSTGRES_URL)
    database = f"bench_consume_{uuid.uuid4().hex[:10]}"
    admin = make_engine(
        server.render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": 5},
    )
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{database}"'))
            version = str((await connection.execute(text("SHOW server_version"))).scalar())
    except Exception as exc:  # not reachable: report, do not fail the other series
        await admin.dispose()
        yield StoreSeries("postgresql", skipped=f"not reachable at {server!r}: {exc!r}")
        return
    url = server.set(database=database).render_as_string(hide_password=False)
    store = ScheduleStore.from_url(url)
    try:
        await store.create_tables()
        yield StoreSeries("postgresql", url, store, version=version)
    finally:
        await store.close()
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        await admin.dispose()


def store_result(series: StoreSeries, worker: list[Round]) -> dict[str, object]:
    """``series``'s figures, its rate against the plain worker's (ratio of medians)."""
    if series.skipped:
        return {"database": series.database, "skipped": series.skipped}
    rate = statistics.median(r.rate for r in series.rounds)
    cpu = statistics.median(r.cpu_us for r in series.rounds)
    return {
        "database": series.database,
        "version": series.version,
        "noop_per_s": [round(r.rate) for r in series.rounds],
        "cpu_us_per_message": [round(r.cpu_us, 1) for r in series.rounds],
        "history_rows_per_round": [r.history_rows for r in series.rounds],
        "outcome_lines_per_round": [r.outcome_lines for r in series.rounds],
        "vs_worker_ratio": round(rate / statistics.median(r.rate for r in worker), 3),
        "target_ratio": SCHEDULE_TARGET_RATIO,
        "cpu_us_per_message_over_worker": round(
            cpu - statistics.median(r.cpu_us for r in worker), 1
        ),
    }


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
    stores: list[StoreSeries] = []  # the worker with a schedule store, per database
    try:
        async with Publisher(settings=settings, connection_name="bench consume publisher") as pub:
            connection = await aio_pika.connect_robust(settings.url)
            await declare_topology(connection, topology)  # queue exists before the first fill
            with tempfile.TemporaryDirectory(prefix="bench-consume-") as run_dir:
                run = Path(run_dir)
                async with contextlib.AsyncExitStack() as stack:
                    if "sqlite" in STORES:
                        stores.append(await stack.enter_async_context(sqlite_series(run)))
                    if "postgresql" in STORES:
                        stores.append(await stack.enter_async_context(postgres_series()))
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
                        for series in stores:
                            if series.skipped:
                                continue
                            await fill(pub, command, MESSAGES)
                            name = f"{series.database}-{number}"
                            series.rounds.append(
                                await store_consume(settings, command.queue, run, name, series)
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
        "worker_with_schedule_store": [store_result(series, worker) for series in stores],
        "note": (
            "same run, alternating rounds, medians. The worker runs in a process of its own "
            "through the CLI (postdate worker bench.consume_app:app) with default logging: "
            "INFO, one JSON outcome line per message on stderr, redirected to a file. It "
            "decodes, checks the hold, calls the no-op handler, counts metrics, logs and acks "
            "each message; the raw loop (in the bench process) only acks. A third series runs "
            "the same worker with logging at WARNING (no outcome lines): outcome_line_cpu_us "
            "is the difference of the medians of worker CPU time per message. Rates and CPU "
            "time run from the first message handled to the last; start-up is excluded. "
            "worker_with_schedule_store: the same worker (INFO) with POSTDATE_SCHEDULE_URL "
            "set, no cancels pending: it checks each delivery against its in-memory "
            "tombstones and queues each outcome, written to postdate_history in one "
            "transaction every 0.2 s by the same process; history_rows_per_round are the "
            "handled rows the database got for the round, counted after the worker exited "
            "(a round fails unless they equal the messages handled); vs_worker_ratio is its "
            "median rate over the plain worker's, target_ratio the goal."
        ),
    }
    write_results(RESULTS, result)


if __name__ == "__main__":
    asyncio.run(main())
