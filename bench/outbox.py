"""Outbox benchmark: what scheduling through the transactional outbox costs a reserve.

Run: ``python -m bench.outbox``; writes ``bench/results/outbox.json``. Needs RabbitMQ
(``RABBITMQ_URL``) for the relay part, and PostgreSQL (``DATABASE_URL`` when it names
PostgreSQL, else ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``; skipped when not
reachable) next to the embedded SQLite.

Per database, in the same run:
(a) reserve with outbox: ``OrderStore.reserve`` (conditional update of the order + one
    outbox row, one transaction) against reserve without scheduling (the same update
    alone), sequential and with 8 concurrent callers. Runs alternate, ``ROUNDS`` times
    each; the ratio of medians is the figure (the machine is shared and noisy).
(b) relay publish rate: the rows written in (a) drained by one ``OutboxRelay`` (select,
    pipelined confirmed publishes, mark sent) against ``Publisher.send_many`` of as many
    commands straight to the broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
from sqlalchemy import text
from tests.helpers import Cleanup

from bench.common import server_version, write_results
from orders.commands import expire_command_for
from orders.store import OrderStore
from postdate import Publisher, Settings
from postdate.outbox import OutboxRelay, pending_count
from postdate.schedule import make_engine

RESULTS = Path(__file__).parent / "results" / "outbox.json"
ROUNDS = 3
RESERVES = 800  # reserves per run
CONCURRENCY = (1, 8)
HOLD = timedelta(days=7)
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def reserve_run(store: OrderStore, count: int, concurrency: int, *, schedule: bool) -> float:
    """Place ``count`` orders (not timed), then reserve them; returns reserves per second."""
    orders = [await store.place(1000) for _ in range(count)]
    queue: asyncio.Queue[uuid.UUID] = asyncio.Queue()
    for order in orders:
        queue.put_nowait(order.id)

    async def caller() -> None:
        while not queue.empty():
            await store.reserve(queue.get_nowait(), hold=HOLD, schedule=schedule)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


def summary(with_outbox: list[float], without: list[float]) -> dict[str, Any]:
    """The rates of both kinds of reserve, their medians, and the ratio of medians."""
    a, b = statistics.median(with_outbox), statistics.median(without)
    return {
        "reserve_with_outbox_per_s": [round(x) for x in with_outbox],
        "reserve_without_scheduling_per_s": [round(x) for x in without],
        "with_outbox_median_per_s": round(a),
        "without_scheduling_median_per_s": round(b),
        "ratio": round(a / b, 3),
    }


async def alternate(store: OrderStore, concurrency: int) -> dict[str, Any]:
    """``ROUNDS`` alternating reserve runs without and with the outbox, summarised."""
    with_outbox: list[float] = []
    without: list[float] = []
    for _ in range(ROUNDS):
        without.append(await reserve_run(store, RESERVES, concurrency, schedule=False))
        with_outbox.append(await reserve_run(store, RESERVES, concurrency, schedule=True))
    return {**summary(with_outbox, without), "reserves_per_run": RESERVES}


async def relay_rate(store: OrderStore, settings: Settings) -> dict[str, Any]:
    """Drain the pending outbox rows with one relay, then ``send_many`` as many commands;
    the rate of each and their ratio.

    Raises:
        AssertionError: the relay published a different number of rows than were pending.
    """
    async with store.sessions() as session:
        rows = await pending_count(session)
    async with Publisher(settings=settings, connection_name="bench outbox") as publisher:
        relay = OutboxRelay(store.sessions, publisher, batch_size=500)
        started = time.perf_counter()
        while await relay.relay_once():
            pass
        relay_seconds = time.perf_counter() - started
        assert relay.published == rows, (relay.published, rows)
        command = store.command
        started = time.perf_counter()
        await publisher.send_many((command(order_id=uuid.uuid4()), HOLD) for _ in range(rows))
        direct_seconds = time.perf_counter() - started
    relay_per_s, direct_per_s = rows / relay_seconds, rows / direct_seconds
    return {
        "rows": rows,
        "relay_rows_per_s": round(relay_per_s),
        "send_many_msg_per_s": round(direct_per_s),
        "ratio": round(relay_per_s / direct_per_s, 3),
        "batch_size": 500,
    }


async def bench_database(name: str, store: OrderStore, settings: Settings) -> dict[str, Any]:
    """Create the schema in ``store`` and run the reserve and relay benchmarks on it."""
    await store.create_schema()
    result: dict[str, Any] = {"database": name}
    for concurrency in CONCURRENCY:
        label = "sequential" if concurrency == 1 else f"concurrent_{concurrency}"
        result[label] = await alternate(store, concurrency)
        print(f"{name} {label}: {json.dumps(result[label])}", flush=True)
    result["relay"] = await relay_rate(store, settings)
    print(f"{name} relay: {json.dumps(result['relay'])}", flush=True)
    return result


async def with_postgres(
    run: Callable[[OrderStore], Awaitable[dict[str, Any]]], store_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """``run`` on a store in a temporary PostgreSQL schema (dropped afterwards), with the
    server's version; a ``skipped`` result when PostgreSQL is not reachable."""
    env = os.environ.get("DATABASE_URL", "")
    url = env if env.startswith("postgresql") else DEFAULT_POSTGRES_URL
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url, connect_args={"timeout": 5})
    try:
        async with admin.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # not reachable: report, do not fail the other half
        await admin.dispose()
        return {"database": "postgresql", "skipped": f"not reachable at {url}: {exc!r}"}
    engine = make_engine(url, connect_args={"server_settings": {"search_path": schema}})
    store = OrderStore(engine, **store_kwargs)
    try:
        version = ""
        async with engine.connect() as connection:
            version = str((await connection.execute(text("SHOW server_version"))).scalar())
        return {**await run(store), "server_version": version}
    finally:
        await store.close()
        async with admin.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await admin.dispose()


async def main() -> dict[str, Any]:
    """Run the outbox benchmark on SQLite and PostgreSQL; returns the results."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings.load(prefix=prefix)
    kind = expire_command_for(f"{prefix}.orders.expire_reservation")
    store_kwargs: dict[str, Any] = {"command": kind, "hold": HOLD}
    tmp = tempfile.mkdtemp(prefix="postdate-bench-")
    connection = await aio_pika.connect(settings.url)
    try:
        rabbitmq = server_version(connection)
    finally:
        await connection.close()
    try:
        sqlite_store = OrderStore.from_url(f"sqlite+aiosqlite:///{tmp}/bench.db", **store_kwargs)
        try:
            sqlite = await bench_database("sqlite", sqlite_store, settings)
        finally:
            await sqlite_store.close()
        postgres = await with_postgres(
            lambda store: bench_database("postgresql", store, settings), store_kwargs
        )
    finally:
        # The ladder, plus the queues the relay's publisher declared and registered.
        await Cleanup(url=settings.url, prefix=prefix, connection_name="bench outbox").run()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "benchmark": "outbox",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rabbitmq_version": rabbitmq,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": ROUNDS,
        "hold": "7 days (reminders enter ladder level 19 and stay there)",
        "what": (
            "reserve = one transaction: conditional UPDATE of the order (+ INSERT of the "
            "outbox row when scheduling); ratio = with outbox / without scheduling, medians "
            "of alternating runs. relay = drain the rows written by the runs with one "
            "relay vs Publisher.send_many of as many commands."
        ),
        "sqlite": sqlite,
        "postgresql": postgres,
    }


def run() -> None:
    """Entry point of ``python -m bench.outbox``: run the benchmark, write ``RESULTS``."""
    results = asyncio.run(main())
    write_results(RESULTS, results)


if __name__ == "__main__":
    run()
