"""Publish benchmark: postdate against raw aio-pika, and delivery lateness through the ladder.

Run: ``python -m bench.publish`` (``make bench``); writes ``bench/results/publish.json``.

(a) sequential ``Publisher.send`` (300 s delay: into ladder level 8) against a raw
    sequential confirmed publish of a same-size JSON body into a quorum queue by the
    default exchange (mandatory, persistent);
(b) ``Publisher.send_many`` against a raw pipelined confirmed publish
    (``asyncio.gather`` over as many messages) into a quorum queue;
(c) how late ~3,000 short delays (1-5 s, random sub-second parts) arrive, consumed
    straight from their command queue (no consumer-side hold);
(d) with the ``bench`` extra installed, Celery's native delayed delivery (bench/celery_series.py)
    in the same rotation: ``apply_async(countdown=300)`` one by one against (a), and
    ``group(...).apply_async(countdown=300)`` (Celery has no bulk publish) against (b), each
    with publisher confirms on (``confirm_publish``) and off (Celery's default).

Runs of (a) and (b) alternate, ``ROUNDS`` times each, and the medians are compared: the
machine is shared and noisy, so the ratio is the figure, not the absolute rate.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from tests.helpers import Cleanup

from bench import celery_series
from bench.common import host_info, server_version, write_results
from postdate._command import Command
from postdate._settings import Settings
from postdate.broker._connection import named_url
from postdate.broker._declare import declare_topology, queue_states
from postdate.broker._topology import (
    Names,
    QueueSpec,
    Topology,
    command_queue_topology,
    ladder_topology,
    quorum,
)
from postdate.delay import _ladder as ladder
from postdate.delay._routing import When, due_time, plan
from postdate.publish._envelope import DUE, Envelope
from postdate.publish._publisher import PIPELINE_WINDOW, Publisher

RESULTS = Path(__file__).parent / "results" / "publish.json"
ROUNDS = 5
SEQUENTIAL = 1_000  # messages per sequential run
PIPELINED = 5_000  # messages per pipelined run
PARKED_DELAY = timedelta(seconds=300)  # enters ladder level 8 and stays there meanwhile
PARKED_LEVEL = ladder.levels(int(PARKED_DELAY.total_seconds()))[0]  # 8
LATENESS = 3_000
LATENESS_DELAYS = (1.0, 5.0)
TARGET_RATIO = 0.9
BASELINES = ("raw", "raw_same_queue", "postdate")
# Celery series: name -> publisher confirms on; one by one (apply_async) and as a group.
CELERY_CONFIRMS = {"celery": True, "celery_no_confirms": False}
ARRIVAL_TIMEOUT = 60  # s: how long to wait for a Celery run's tasks to reach the broker
CELERY_LEVEL = celery_series.first_level(int(PARKED_DELAY.total_seconds()))  # celery_delayed_8


class Reserve(Command, queue="bench.unused"):
    """A typical small command: an id and a short note."""

    order_id: str
    note: str = "expire the reservation unless picked up"


def command_class(queue: str) -> type[Reserve]:
    """A ``Reserve`` subclass on ``queue``, keeping the type name ``Reserve``."""

    class BenchReserve(Reserve, queue=queue, name="Reserve"):
        pass

    return BenchReserve


def sample_body() -> bytes:
    """The JSON body of one ``Reserve``, for the raw baseline."""
    return Reserve(order_id=str(uuid.uuid4())).model_dump_json().encode()


def raw_message(body: bytes) -> aio_pika.Message:
    """A bare persistent JSON message with a fresh id: what the raw baseline publishes."""
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),
    )


async def raw_sequential(channel: AbstractChannel, queue: str, count: int, body: bytes) -> float:
    """Messages per second of ``count`` confirmed publishes into ``queue``, one at a time."""
    started = time.perf_counter()
    for _ in range(count):
        await channel.default_exchange.publish(raw_message(body), queue, mandatory=True)
    return count / (time.perf_counter() - started)


async def raw_pipelined(channel: AbstractChannel, queue: str, count: int, body: bytes) -> float:
    """Messages per second of ``count`` confirmed publishes into ``queue``, all at once."""
    exchange = channel.default_exchange
    started = time.perf_counter()
    await asyncio.gather(
        *(exchange.publish(raw_message(body), queue, mandatory=True) for _ in range(count))
    )
    return count / (time.perf_counter() - started)


async def postdate_sequential(publisher: Publisher, kind: type[Reserve], count: int) -> float:
    """Messages per second of ``count`` ``Publisher.send`` calls with ``PARKED_DELAY``.

    The commands are made before the clock starts, as in :func:`postdate_pipelined`: the
    raw baseline does not time making its payload either (it publishes one body)."""
    commands = [kind(order_id=str(uuid.uuid4())) for _ in range(count)]
    started = time.perf_counter()
    for command in commands:
        await publisher.send(command, PARKED_DELAY)
    return count / (time.perf_counter() - started)


async def postdate_pipelined(publisher: Publisher, kind: type[Reserve], count: int) -> float:
    """Messages per second of one ``Publisher.send_many`` of ``count`` commands."""
    items: list[tuple[Reserve, When]] = [
        (kind(order_id=str(uuid.uuid4())), PARKED_DELAY) for _ in range(count)
    ]
    started = time.perf_counter()
    await publisher.send_many(items)
    return count / (time.perf_counter() - started)


def client_build_cost(publisher: Publisher, kind: type[Reserve], body: bytes) -> dict[str, float]:
    """Microseconds of client CPU per message to build what is published, broker aside:
    postdate's prepare + AMQP properties (what ``send`` builds) against a bare
    ``aio_pika.Message`` (what the raw baseline builds)."""
    count = 5_000
    commands = [kind(order_id=str(uuid.uuid4())) for _ in range(count)]
    started = time.perf_counter()
    for command in commands:
        now = datetime.now(UTC)
        envelope = Envelope.for_command(command, due_time(now, PARKED_DELAY))
        envelope.properties(plan(publisher.names, envelope, now).cc)
    ours = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for _ in range(count):
        raw_message(body)
    raw = (time.perf_counter() - started) / count * 1e6
    return {"postdate_prepare_and_build": round(ours, 1), "raw_message_build": round(raw, 1)}


async def alternate(
    runs: dict[str, Callable[[], Awaitable[float]]],
    reset: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """``ROUNDS`` runs of each, rotating which goes first; medians and their ratios.

    ``runs["raw"]`` publishes into a plain quorum queue (the baseline of the target
    ratio); ``runs["raw_same_queue"]`` publishes the same bare message into the ladder
    level postdate uses, which separates the cost of that queue's arguments (TTL,
    at-least-once dead-lettering, reject-publish) from postdate's own client-side cost;
    ``runs["postdate"]`` is postdate. Any other runs (the Celery series) get a
    ``postdate_vs_<name>`` ratio. ``reset`` empties the queues after every run (untimed),
    so each run starts from the same state.
    """
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_number in range(ROUNDS):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(await runs[name]())
            await reset()
    median = {name: statistics.median(values) for name, values in rates.items()}
    ratio = median["postdate"] / median["raw"]
    return {
        **{f"{name}_msg_per_s": [round(rate) for rate in rates[name]] for name in names},
        **{f"{name}_median_msg_per_s": round(median[name]) for name in names},
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "ratio_vs_raw_into_same_ladder_queue": round(
            median["postdate"] / median["raw_same_queue"], 3
        ),
        "raw_ladder_queue_vs_plain_quorum_queue": round(
            median["raw_same_queue"] / median["raw"], 3
        ),
        **{
            f"postdate_vs_{name}": round(median["postdate"] / median[name], 2)
            for name in names
            if name not in BASELINES
        },
    }


async def lateness(
    publisher: Publisher, connection: AbstractRobustConnection, queue: str
) -> dict[str, Any]:
    """Send ``LATENESS`` commands due in 1-5 s and time their arrival on the command queue."""
    kind = command_class(queue)
    rng = random.Random()
    delays = {str(n): rng.uniform(*LATENESS_DELAYS) for n in range(LATENESS)}
    arrivals: list[tuple[AbstractIncomingMessage, float]] = []
    done = asyncio.Event()
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=500)

    async def on_message(message: AbstractIncomingMessage) -> None:
        arrivals.append((message, time.time()))
        await message.ack()
        if len(arrivals) >= LATENESS:
            done.set()

    await (await channel.get_queue(queue, ensure=False)).consume(on_message)
    items: list[tuple[Reserve, When]] = [
        (kind(order_id=n), timedelta(seconds=delay)) for n, delay in delays.items()
    ]
    rng.shuffle(items)
    published = time.perf_counter()
    await publisher.send_many(items)
    publish_s = time.perf_counter() - published
    try:
        await asyncio.wait_for(done.wait(), timeout=LATENESS_DELAYS[1] + 60)
    finally:
        await channel.close()

    ladder_latency = []  # after the whole-second due: the ladder's own lateness
    with_hold = []  # after the exact due, had a consumer held the sub-second remainder
    before_exact_due = 0
    for message, arrived in arrivals:
        delay = delays[kind.model_validate_json(message.body).order_id]
        due_value = (message.headers or {})[DUE]
        assert isinstance(due_value, int)
        due = due_value / 1000
        whole_second_due = due - (delay - math.floor(delay))
        ladder_latency.append(arrived - whole_second_due)
        with_hold.append(max(arrived, due) - due)
        before_exact_due += arrived < due
    return {
        "messages": LATENESS,
        "delays_s": list(LATENESS_DELAYS),
        "published_in_s": round(publish_s, 2),
        "lateness_after_whole_second_due_s": percentiles(ladder_latency),
        "early_vs_whole_second_due": sum(latency < 0 for latency in ladder_latency),
        "lateness_after_exact_due_with_consumer_hold_s": percentiles(with_hold),
        "arrived_before_exact_due_without_hold": before_exact_due,
        "unique_arrivals": len({message.message_id for message, _ in arrivals}),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """The median, 99th percentile and maximum of ``values``, rounded to milliseconds."""
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 3)}


async def purge(connection: AbstractConnection, *queues: str) -> None:
    """Empty ``queues`` on a channel of its own."""
    channel = await connection.channel(publisher_confirms=False)
    underlay = await channel.get_underlay_channel()
    for queue in queues:
        await underlay.queue_purge(queue)
    await channel.close()


class CelerySeries:
    """The Celery series of one run (confirms on and off), on a task queue of the run's
    prefix. After each run (untimed for its rate) it waits until the broker holds the
    run's tasks in ``CELERY_LEVEL``: ``arrived`` notes how many it held (all, unless
    ``ARRIVAL_TIMEOUT`` passed), ``in_queue`` the rate counted from the run's start to
    then, which is what Celery's rate means at the broker when confirms are off."""

    def __init__(self, url: str, prefix: str) -> None:
        self.queue = f"{prefix}.celery"
        self.clients = {
            name: celery_series.CeleryClient(url, self.queue, confirm=confirm)
            for name, confirm in CELERY_CONFIRMS.items()
        }
        self.arrived: dict[str, list[int]] = {}
        self.in_queue: dict[str, list[float]] = {}

    def runs(
        self, connection: AbstractConnection, count: int, *, group: bool
    ) -> dict[str, Callable[[], Awaitable[float]]]:
        """The series for :func:`alternate`: ``celery``/``celery_no_confirms`` one by one,
        or ``celery_group``/``celery_group_no_confirms``."""
        countdown = int(PARKED_DELAY.total_seconds())
        note = Reserve.model_fields["note"].default
        runs: dict[str, Callable[[], Awaitable[float]]] = {}
        for name, client in self.clients.items():
            series = name.replace("celery", "celery_group", 1) if group else name
            method = client.group if group else client.one_by_one
            run = functools.partial(method, count, countdown, note)
            runs[series] = functools.partial(self.timed, series, run, connection, count)
        return runs

    async def timed(
        self, series: str, run: Callable[[], float], connection: AbstractConnection, count: int
    ) -> float:
        """Run ``run`` (synchronous Celery calls) in a thread, then wait for the broker to
        hold its ``count`` tasks; returns the rate Celery's caller saw."""
        started = time.perf_counter()
        rate = await asyncio.to_thread(run)
        held = await held_in(connection, CELERY_LEVEL, count)
        self.arrived.setdefault(series, []).append(held)
        self.in_queue.setdefault(series, []).append(held / (time.perf_counter() - started))
        return rate

    def close(self) -> None:
        """Close every client's connections."""
        for client in self.clients.values():
            client.close()

    def results(self) -> dict[str, Any]:
        """The Celery part of the results."""
        return {
            "versions": celery_series.versions(),
            "settings": {
                name: celery_series.CeleryClient.settings(confirm)
                for name, confirm in CELERY_CONFIRMS.items()
            },
            "first_level_queue": CELERY_LEVEL,
            "tasks_in_first_level_per_run": self.arrived,
            "until_in_queue_msg_per_s": {
                series: [round(rate) for rate in rates] for series, rates in self.in_queue.items()
            },
            "until_in_queue_median_msg_per_s": {
                series: round(statistics.median(rates)) for series, rates in self.in_queue.items()
            },
            "note": CELERY_NOTE,
        }


CELERY_NOTE = (
    "Celery's native delayed delivery (bench/celery_series.py): a Celery app with "
    "task_default_queue_type='quorum' and a topic exchange sends a 'bench.reserve' task "
    "(args: an order id and the same note) with countdown=300 into celery_delayed_27, "
    "whose bindings route it to celery_delayed_8 (the topology a Celery worker declares, "
    "declared before the runs and deleted after). 'celery' = apply_async one by one with "
    "broker_transport_options confirm_publish=True (each publish waits for the broker's "
    "ack, as postdate's send does); 'celery_no_confirms' = Celery's default (no publisher "
    "confirms: apply_async returns once the frame is written, a broker-side rejection or a "
    "connection lost before the write is flushed goes unnoticed). Celery has no bulk "
    "publish: 'celery_group*' is one group(...).apply_async(countdown=300), which publishes "
    "its tasks one at a time on one producer (each waiting for its confirm when confirms "
    "are on). Celery never publishes mandatory (an unroutable task is dropped silently). "
    "Celery's calls are synchronous and run in a thread; its messages carry Celery's "
    "protocol-2 headers and body, larger than postdate's. After each Celery run the "
    "benchmark polls celery_delayed_8 (passive declare, every 20 ms) until it holds the "
    "run's tasks: tasks_in_first_level_per_run is what it held then (all, unless "
    f"{ARRIVAL_TIMEOUT} s passed), until_in_queue_msg_per_s the tasks over the time from "
    "the run's start to then. Without confirms apply_async returns once py-amqp has "
    "written the frame to the socket, so the caller's rate (<series>_msg_per_s) can run "
    "ahead of what the broker has taken; with confirms the two agree."
)


async def held_in(connection: AbstractConnection, queue: str, count: int) -> int:
    """Wait until ``queue`` holds ``count`` messages (at most ``ARRIVAL_TIMEOUT`` s); how
    many it holds then."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        state = (await queue_states(connection, [queue]))[queue]
        held = state.messages if state else 0
        if held >= count or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.02)


async def celery_setup(
    connection: AbstractConnection, settings: Settings, prefix: str, cleanup: Cleanup
) -> tuple[CelerySeries | None, str | None]:
    """The Celery series with their topology declared (and tracked for deletion), or
    ``None`` and why they are skipped."""
    if not celery_series.available():
        print(celery_series.MISSING)
        return None, celery_series.MISSING
    existing = await queue_states(connection, celery_series.QUEUES[-1:])
    if any(existing.values()):
        reason = (
            "celery_delayed_* queues exist on this broker already (another Celery?): "
            "skipping the Celery series so as not to touch them"
        )
        print(reason)
        return None, reason
    series = CelerySeries(settings.url, prefix)
    cleanup.track_queue(series.queue)
    cleanup.track_exchange(series.queue)
    for queue in celery_series.QUEUES:
        cleanup.track_queue(queue)
    for exchange in celery_series.EXCHANGES:
        cleanup.track_exchange(exchange)
    # Declare with Celery's confirming client, as a worker would at start.
    await asyncio.to_thread(series.clients["celery"].declare)
    return series, None


async def throughput(
    connection: AbstractRobustConnection,
    publisher: Publisher,
    prefix: str,
    raw_queue: str,
    celery: CelerySeries | None,
) -> dict[str, Any]:
    """(a) and (b), with the Celery series when there are any."""
    raw_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    body = sample_body()
    kind = command_class(f"{prefix}.parked")
    assert len(kind(order_id=str(uuid.uuid4())).model_dump_json()) == len(body)
    parked = Names(prefix).delay_queue(PARKED_LEVEL)
    purged = (raw_queue, parked, CELERY_LEVEL) if celery else (raw_queue, parked)

    async def reset() -> None:
        await purge(connection, *purged)

    modes = (
        (SEQUENTIAL, raw_sequential, postdate_sequential, False),
        (PIPELINED, raw_pipelined, postdate_pipelined, True),
    )
    measured = []
    for count, raw_run, ours, group in modes:
        part = await alternate(
            {
                "raw": functools.partial(raw_run, raw_channel, raw_queue, count, body),
                "raw_same_queue": functools.partial(raw_run, raw_channel, parked, count, body),
                "postdate": functools.partial(ours, publisher, kind, count),
                **(celery.runs(connection, count, group=group) if celery else {}),
            },
            reset,
        )
        part["messages_per_run"] = count
        measured.append(part)
    sequential, pipelined = measured
    pipelined["send_many_window"] = PIPELINE_WINDOW
    return {
        "body_bytes": len(body),
        "sequential_send_vs_raw_confirmed_publish": sequential,
        "send_many_vs_raw_pipelined_confirmed_publish": pipelined,
        "client_cpu_us_per_message": client_build_cost(publisher, kind, body),
    }


async def main() -> dict[str, Any]:
    """Run the publish benchmark; returns the results."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings.load(prefix=prefix)
    raw_queue = f"{prefix}.raw"
    lateness_queue = f"{prefix}.lateness"
    topology = (
        ladder_topology(prefix)
        + command_queue_topology(prefix, lateness_queue)
        + Topology(queues=(QueueSpec(raw_queue, quorum()),))
    )
    # The ladder and queues, the queues the publisher declared and registered, and
    # whatever the Celery series declare (celery_delayed_*: leftover quorum queues pile up).
    cleanup = Cleanup(url=settings.url, prefix=prefix, connection_name="bench publish")
    cleanup.track(topology)
    host = host_info()
    connection = await aio_pika.connect_robust(named_url(settings.url, "bench.publish raw"))
    started = time.perf_counter()
    celery: CelerySeries | None = None
    try:
        await declare_topology(connection, topology)
        async with Publisher(settings=settings, connection_name="bench.publish") as publisher:
            # Lateness first, while the broker holds nothing else.
            delivery = await lateness(publisher, connection, lateness_queue)
            celery, celery_skipped = await celery_setup(connection, settings, prefix, cleanup)
            measured = await throughput(connection, publisher, prefix, raw_queue, celery)
        version = server_version(connection)
    finally:
        if celery:
            await asyncio.to_thread(celery.close)
        await connection.close()
        await cleanup.run()

    return {
        "benchmark": "publish",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "make bench (python -m bench.publish)",
        "rabbitmq_version": version,
        "host": host,
        "rounds": ROUNDS,
        **measured,
        "delivery_lateness": delivery,
        "celery": celery.results() if celery else {"skipped": celery_skipped},
        "duration_s": round(time.perf_counter() - started, 1),
        "note": (
            "Raw baseline: aio-pika confirmed, mandatory, persistent publishes of a same-size "
            "JSON body (no headers) into a plain quorum queue by the default exchange, on its "
            "own connection ('ratio' is against it: the target). postdate publishes the same "
            "way into ladder level 8 (300 s delay), with its envelope headers and the ladder "
            "key in CC; its commands are made before a run is timed, as the raw body is, and "
            "serialized within it. 'raw_same_queue' publishes the bare message into that "
            "ladder queue, "
            "to tell the queue's own cost (TTL, at-least-once dead-lettering, reject-publish) "
            "from postdate's client-side cost. Queues are purged after every run; send_many "
            f"pipelines in windows of {PIPELINE_WINDOW}. Runs rotate and the medians of "
            f"{ROUNDS} are compared; the machine is shared, so compare ratios, not rates. "
            "The Celery series (see celery.note) run in the same rotation; postdate_vs_<series> "
            "is postdate's median over theirs. "
            "Delivery lateness is measured at the command queue, before the consumer holds "
            "the sub-second remainder: 'after whole-second due' is the ladder's own "
            "latency (negative would be early), 'with consumer hold' is what a handler sees."
        ),
    }


def run() -> None:
    """Entry point of ``python -m bench.publish``: run the benchmark, write ``RESULTS``."""
    results = asyncio.run(main())
    write_results(RESULTS, results)


if __name__ == "__main__":
    run()
