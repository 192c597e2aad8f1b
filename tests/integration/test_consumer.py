"""The consumer runtime against the real broker: outcomes, retries, poison, invalid input."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection, HeadersType

from postdate import (
    Consumer,
    Context,
    Outcome,
    Publisher,
    Reason,
    Retry,
    RetryPolicy,
    Settings,
    Skip,
    TopologyMismatch,
    Worker,
)
from postdate._clock import to_epoch_ms
from postdate.broker._topology import poison_queue
from postdate.consume._dispatch import HOLD_LIMIT_SECONDS
from postdate.parking._poison import (
    ATTEMPTS,
    CONSUMER,
    ERROR_MESSAGE,
    ERROR_TYPE,
    FAILED_AT,
    ORIGIN_QUEUE,
    REASON,
    TRACEBACK,
)
from postdate.parking._triage import PoisonFilter, list_poison, replay_poison
from postdate.publish._envelope import ATTEMPT, DUE, QUEUE, SCHEMA, Envelope
from tests.helpers import (
    BACKENDS,
    Cleanup,
    Ping,
    StartWorker,
    WorkerStarter,
    collect,
    command_for,
    eventually,
    open_connection_names,
    queue_depth,
)

FAST = RetryPolicy(max_attempts=3, tiers=(timedelta(seconds=1),))


class Permanent(Exception):
    pass


@pytest.fixture
async def start_worker(
    settings: Settings, cleanup: Cleanup, test_name: str
) -> AsyncIterator[StartWorker]:
    starter = WorkerStarter(settings, cleanup, test_name)
    yield starter.start
    await starter.stop_all()


async def test_a_failed_start_closes_what_it_opened(
    prefix: str, settings: Settings, cleanup: Cleanup, connection: AbstractRobustConnection
) -> None:
    cmd = command_for(f"{prefix}.mismatch")
    app = Consumer()

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        pass

    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    channel = await connection.channel()
    await channel.declare_queue(cmd.queue, durable=True, arguments={"x-queue-type": "quorum"})
    await channel.close()
    shut_down: list[str] = []
    app.on_shutdown(lambda: _append(shut_down, "closed"))
    worker = Worker(app, settings, name=f"{prefix} failing worker")

    with pytest.raises(TopologyMismatch):
        await worker.start()

    assert shut_down == ["closed"]
    assert not [name for name in await open_connection_names() if name.startswith(worker.name)]


async def _append(items: list[str], item: str) -> None:
    items.append(item)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_retry_after_longer_than_every_tier_waits_that_long(
    prefix: str, publisher: Publisher, start_worker: StartWorker
) -> None:
    cmd = command_for(f"{prefix}.later")
    app = Consumer()
    seen: list[tuple[int, float]] = []

    @app.handler(cmd, retries=RetryPolicy(max_attempts=3, tiers=(timedelta(seconds=1),)))
    async def handle(command: Ping, context: Context) -> None:
        seen.append((context.attempt, time.monotonic()))
        if context.attempt == 1:
            raise Retry("not yet", after=timedelta(seconds=3))

    worker = await start_worker(app)
    await publisher.send(cmd(n=1))
    await eventually(lambda: worker.outcomes[Outcome.HANDLED] == 1, 15, "handled on attempt 2")
    [(first, started), (second, retried)] = seen
    assert (first, second) == (1, 2)
    assert retried - started >= 2.9  # not the 1 s tier: the ladder, due 3 s later


async def test_a_handler_cut_off_by_the_grace_period_is_recorded_as_abandoned(
    prefix: str, publisher: Publisher, settings: Settings, cleanup: Cleanup, test_name: str
) -> None:
    cmd = command_for(f"{prefix}.slow")
    app = Consumer()
    started = asyncio.Event()

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        started.set()
        await asyncio.sleep(30)

    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    worker = Worker(app, settings, name=f"{test_name} worker")
    await worker.start()
    try:
        await publisher.send(cmd(n=1))
        await asyncio.wait_for(started.wait(), 10)
    finally:
        await worker.stop(grace_period=0.2)
    assert worker.outcomes[Outcome.ABANDONED] == 1  # its outcome line was logged too


async def test_outcomes_handled_skipped_retried_poisoned(
    prefix: str,
    publisher: Publisher,
    start_worker: StartWorker,
    connection: AbstractRobustConnection,
) -> None:
    cmd = command_for(f"{prefix}.outcomes")
    app = Consumer()
    attempts: dict[int, list[int]] = {}

    @app.handler(cmd, retries=FAST)
    async def handle(command: Ping, context: Context) -> None:
        attempts.setdefault(command.n, []).append(context.attempt)
        if command.n == 2:
            raise Skip("nothing to do")
        if command.n == 3 and context.attempt < 2:
            raise Retry("not yet", after=0.5)
        if command.n == 4:
            raise RuntimeError("always fails")

    worker = await start_worker(app)
    ids = {n: await publisher.send(cmd(n=n)) for n in (1, 2, 3, 4)}
    await eventually(lambda: sum(worker.outcomes.values()) >= 7, 20, "7 outcomes")

    assert attempts == {1: [1], 2: [1], 3: [1, 2], 4: [1, 2, 3]}
    assert worker.outcomes == Counter(
        {Outcome.HANDLED: 2, Outcome.SKIPPED: 1, Outcome.RETRIED: 3, Outcome.POISONED: 1}
    )
    [parked] = await collect(connection, poison_queue(cmd.queue), 1, timeout=5)
    headers = parked.message.headers
    assert parked.message.message_id == ids[4]
    assert headers[REASON] == Reason.EXHAUSTED
    assert headers[ATTEMPTS] == 3
    assert headers[ERROR_TYPE] == "RuntimeError"
    assert headers[ERROR_MESSAGE] == "always fails"
    assert "RuntimeError: always fails" in str(headers[TRACEBACK])
    assert headers[ORIGIN_QUEUE] == cmd.queue
    assert str(headers[CONSUMER]).endswith(f":{__import__('os').getpid()}")
    assert abs(int(headers[FAILED_AT]) - time.time() * 1000) < 30_000  # type: ignore[arg-type]
    assert parked.message.body == b'{"n":4}'
    assert "x-death" not in headers


async def test_permanent_error_is_poisoned_at_once(
    prefix: str,
    publisher: Publisher,
    start_worker: StartWorker,
    connection: AbstractRobustConnection,
) -> None:
    cmd = command_for(f"{prefix}.permanent")
    app = Consumer()

    @app.handler(cmd, retries=RetryPolicy(max_attempts=5, tiers=FAST.tiers, permanent=(Permanent,)))
    async def handle(command: Ping, context: Context) -> None:
        raise Permanent("bad state")

    worker = await start_worker(app)
    await publisher.send(cmd(n=1))
    await eventually(lambda: worker.outcomes[Outcome.POISONED] == 1, 10, "poison")
    [parked] = await collect(connection, poison_queue(cmd.queue), 1, timeout=5)
    assert parked.message.headers[REASON] == Reason.PERMANENT
    assert parked.message.headers[ATTEMPTS] == 1
    assert worker.outcomes[Outcome.RETRIED] == 0


def _raw(body: bytes, headers: HeadersType, type_: str | None, message_id: str) -> aio_pika.Message:
    return aio_pika.Message(
        body, headers=headers, type=type_, message_id=message_id, content_type="application/json"
    )


async def test_invalid_input_goes_to_poison_with_reason_and_worker_keeps_consuming(
    prefix: str,
    publisher: Publisher,
    start_worker: StartWorker,
    connection: AbstractRobustConnection,
) -> None:
    cmd = command_for(f"{prefix}.invalid")
    app = Consumer()
    handled: list[int] = []

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        handled.append(command.n)

    worker = await start_worker(app)
    good: HeadersType = {
        DUE: to_epoch_ms(datetime.now(UTC)),
        ATTEMPT: 1,
        SCHEMA: 1,
        QUEUE: cmd.queue,
    }
    cases = {
        "not-json": (b"{not json", good, "Ping", Reason.INVALID_JSON),
        "unknown": (b'{"n":1}', good, "NoSuchCommand", Reason.UNKNOWN_TYPE),
        "schema": (b'{"n":"many"}', good, "Ping", Reason.SCHEMA),
        "extra-field": (b'{"n":1,"zz":2}', good, "Ping", Reason.SCHEMA),
        "no-due": (
            b'{"n":1}',
            {k: v for k, v in good.items() if k != DUE},
            "Ping",
            "missing-header",
        ),
        "no-type": (b'{"n":1}', good, None, "missing-header"),
        "bad-attempt": (b'{"n":1}', {**good, ATTEMPT: "x"}, "Ping", "invalid-header"),
        "absurd-due": (b'{"n":1}', {**good, DUE: 10**18}, "Ping", "invalid-header"),
    }
    channel = await connection.channel()
    for message_id, (body, headers, kind, _) in cases.items():
        await channel.default_exchange.publish(_raw(body, headers, kind, message_id), cmd.queue)
    await publisher.send(cmd(n=7))
    await eventually(
        lambda: handled == [7] and worker.outcomes[Outcome.POISONED] == len(cases), 10, "all"
    )

    parked = await collect(connection, poison_queue(cmd.queue), len(cases), timeout=5)
    reasons = {item.message.message_id: item.message.headers[REASON] for item in parked}
    assert reasons == {message_id: case[3] for message_id, case in cases.items()}
    bodies = {item.message.message_id: item.message.body for item in parked}
    assert bodies == {message_id: case[0] for message_id, case in cases.items()}


async def test_failing_message_never_stops_the_others(
    prefix: str, publisher: Publisher, start_worker: StartWorker
) -> None:
    cmd = command_for(f"{prefix}.mixed")
    app = Consumer()
    handled: set[int] = set()

    @app.handler(cmd, retries=RetryPolicy(max_attempts=1, tiers=FAST.tiers))
    async def handle(command: Ping, context: Context) -> None:
        if command.n % 10 == 0:
            raise ValueError(f"bad {command.n}")
        handled.add(command.n)

    worker = await start_worker(app)
    await publisher.send_many((cmd(n=n), 0) for n in range(200))
    await eventually(lambda: sum(worker.outcomes.values()) == 200, 20, "200 outcomes")
    assert handled == {n for n in range(200) if n % 10}
    assert worker.outcomes[Outcome.POISONED] == 20


async def test_two_workers_share_the_load_without_duplicates(
    prefix: str, publisher: Publisher, start_worker: StartWorker
) -> None:
    cmd = command_for(f"{prefix}.shared")
    seen: list[tuple[int, str]] = []

    def app_for(label: str) -> Consumer:
        app = Consumer()

        @app.handler(cmd)
        async def handle(command: Ping, context: Context) -> None:
            await asyncio.sleep(0.005)
            seen.append((command.n, label))

        return app

    await start_worker(app_for("a"))
    await start_worker(app_for("b"))
    await publisher.send_many((cmd(n=n), 0) for n in range(400))
    await eventually(lambda: len(seen) >= 400, 30, "400 handled")
    await asyncio.sleep(0.3)  # let any duplicate show up before counting
    numbers = Counter(n for n, _ in seen)
    assert len(numbers) == 400 and max(numbers.values()) == 1
    by_worker = Counter(label for _, label in seen)
    assert by_worker["a"] > 50 and by_worker["b"] > 50, by_worker


@pytest.mark.parametrize("backend", BACKENDS)
async def test_follow_up_is_confirmed_before_ack_and_keeps_its_id_on_redelivery(
    prefix: str,
    publisher: Publisher,
    start_worker: StartWorker,
    connection: AbstractRobustConnection,
) -> None:
    first = command_for(f"{prefix}.first")
    second = command_for(f"{prefix}.second", name="Second")
    app = Consumer()
    follow_ups: list[str] = []
    calls = 0

    @app.handler(first, retries=FAST)
    async def handle(command: Ping, context: Context) -> None:
        nonlocal calls
        calls += 1
        follow_ups.append(context.follow_up(second(n=command.n + 1), delay=1))
        if calls == 1:
            raise RuntimeError("fails after queueing a follow-up: it is not sent")

    @app.handler(second)
    async def noop(command: Ping, context: Context) -> None:
        raise Skip("seen")

    worker = await start_worker(app)
    await publisher.send(first(n=1))
    await eventually(lambda: worker.outcomes[Outcome.SKIPPED] == 1, 15, "follow-up handled")
    assert worker.outcomes[Outcome.RETRIED] == 1 and worker.outcomes[Outcome.HANDLED] == 1
    assert follow_ups[0] == follow_ups[1]  # same derived id on both attempts: deduplicable
    assert await queue_depth(connection, second.queue) == 0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_early_message_is_held_until_its_exact_due_time(
    prefix: str, publisher: Publisher, start_worker: StartWorker
) -> None:
    cmd = command_for(f"{prefix}.timing")
    app = Consumer()
    lateness: list[float] = []

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        lateness.append((datetime.now(UTC) - context.due_at).total_seconds())

    await start_worker(app)
    delays = [0.3, 0.9, 1.2, 1.75, 2.5, 2.99]
    await publisher.send_many((cmd(n=i), delay) for i, delay in enumerate(delays))
    await eventually(lambda: len(lateness) == len(delays), 15, "all delivered")
    assert min(lateness) >= 0, lateness  # never early
    assert max(lateness) < 1.0, lateness


async def test_poison_replay_sends_the_message_back_as_attempt_one(
    prefix: str,
    settings: Settings,
    publisher: Publisher,
    start_worker: StartWorker,
    connection: AbstractRobustConnection,
) -> None:
    cmd = command_for(f"{prefix}.replay")
    app = Consumer()
    healthy = False
    attempts: list[int] = []

    @app.handler(cmd, retries=RetryPolicy(max_attempts=1, tiers=FAST.tiers))
    async def handle(command: Ping, context: Context) -> None:
        attempts.append(context.attempt)
        if not healthy:
            raise RuntimeError("dependency down")

    worker = await start_worker(app)
    message_id = await publisher.send(cmd(n=5))
    await eventually(lambda: worker.outcomes[Outcome.POISONED] == 1, 10, "poisoned")
    [entry] = (await list_poison(connection, cmd.queue)).entries
    assert entry.message_id == message_id and entry.reason == Reason.EXHAUSTED

    # Listing keeps it: back in the queue once the broker processed the channel's close.
    async def parked_again() -> bool:
        return await queue_depth(connection, poison_queue(cmd.queue)) == 1

    await eventually(parked_again, 5, "the listed message back in the poison queue")

    healthy = True
    only = PoisonFilter(message_ids=frozenset({message_id}))
    replayed = await replay_poison(connection, publisher, cmd.queue, only)
    assert replayed.moved == [message_id]
    await eventually(lambda: worker.outcomes[Outcome.HANDLED] == 1, 10, "handled after replay")
    assert attempts == [1, 1]
    assert await queue_depth(connection, poison_queue(cmd.queue)) == 0


async def test_startup_hooks_run_before_consuming_and_shutdown_hooks_after_draining(
    prefix: str, publisher: Publisher, start_worker: StartWorker
) -> None:
    cmd = command_for(f"{prefix}.hooks")
    app = Consumer()
    events: list[str] = []

    @app.on_startup
    async def open_pool() -> None:
        events.append("startup")

    @app.on_shutdown
    async def close_pool() -> None:
        events.append("shutdown")

    running = asyncio.Event()

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        running.set()
        await asyncio.sleep(0.3)
        events.append(f"handled {command.n}")

    worker = await start_worker(app)
    await publisher.send(cmd(n=1))
    await asyncio.wait_for(running.wait(), 10)
    await worker.stop(grace_period=5)  # waits for the running handler, then the hooks
    assert events == ["startup", "handled 1", "shutdown"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_message_far_ahead_of_its_due_time_goes_back_through_the_ladder(
    prefix: str,
    publisher: Publisher,
    start_worker: StartWorker,
    connection: AbstractRobustConnection,
) -> None:
    cmd = command_for(f"{prefix}.early")
    app = Consumer()
    lateness: list[float] = []

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        lateness.append((datetime.now(UTC) - context.due_at).total_seconds())

    worker = await start_worker(app)
    due_in = timedelta(seconds=HOLD_LIMIT_SECONDS + 1)  # beyond what a worker holds
    envelope = Envelope.for_command(cmd(n=1), datetime.now(UTC) + due_in)
    channel = await connection.channel()  # hand-published now, into the command queue
    underlay = await channel.get_underlay_channel()
    await underlay.basic_publish(
        envelope.body, routing_key=cmd.queue, properties=envelope.properties()
    )
    await eventually(lambda: worker.outcomes[Outcome.RESCHEDULED] == 1, 5, "rescheduled")
    await eventually(lambda: len(lateness) == 1, 15, "handled at its due time")
    assert 0 <= lateness[0] < 1.0


async def test_metrics_are_served_when_a_port_is_set(
    prefix: str, settings: Settings, publisher: Publisher, cleanup: Cleanup, test_name: str
) -> None:
    cmd = command_for(f"{prefix}.metrics")
    app = Consumer()

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        raise Skip("counted")

    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    worker = Worker(app, settings.model_copy(update={"metrics_port": 0}), name=test_name)
    await worker.start()
    try:
        await publisher.send(cmd(n=1))
        await eventually(lambda: worker.outcomes[Outcome.SKIPPED] == 1, 10, "skipped")
        url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
        page = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    finally:
        await worker.stop(grace_period=2)
    expected = f'postdate_messages_total{{outcome="skipped",queue="{cmd.queue}",type="Ping"}} 1.0'
    assert expected in page.decode()


async def test_held_message_does_not_take_a_handler_slot(
    prefix: str, settings: Settings, publisher: Publisher, cleanup: Cleanup, test_name: str
) -> None:
    cmd = command_for(f"{prefix}.slots")
    app = Consumer()
    lateness: dict[int, float] = {}

    @app.handler(cmd)
    async def handle(command: Ping, context: Context) -> None:
        lateness[command.n] = (datetime.now(UTC) - context.due_at).total_seconds()

    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    worker = Worker(app, settings.model_copy(update={"concurrency": 1}), name=test_name)
    await worker.start()
    try:
        await publisher.send(cmd(n=1), delay=0.9)  # arrives first, held 0.9 s
        await publisher.send(cmd(n=2), delay=0.1)  # must not wait behind it
        await eventually(lambda: len(lateness) == 2, 10, "both handled")
    finally:
        await worker.stop(grace_period=2)
    assert 0 <= lateness[2] < 0.3, lateness
    assert 0 <= lateness[1] < 0.3, lateness
