"""kill -9 of the node holding a queue's leader while commands are scheduled, moving down
the ladder and coming due: every confirmed command is delivered, none early, and the
pause the clients see is measured.

Two scenarios, one node killed in each: the leader of every ladder level (the command
queue's on another node), then the leader of the command queue (the ladder's on another
node). Leaders are placed by declaring the queues through a connection to the chosen node
(RabbitMQ puts a new quorum queue's leader on the declaring client's node). The worker and
one publisher reach the cluster through a failover proxy whose first choice is the node to
be killed, so they lose their connection and reconnect to another node; a second publisher
is connected to a node that stays up.

A loss fails the test. Commands held until the killed node returns (RabbitMQ 3.10's
at-least-once dead-lettering stalls when the node that led both the expiring level and its
target queue dies) are told apart and reported as "stalled until node returned";
``CLUSTER_FAIL_ON_STALL=1`` fails on that too. The figures go to
bench/results/cluster.json (fields: :mod:`tests.cluster.results`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import aio_pika
import pytest
from bench.common import percentiles, server_version

from postdate import PostdateError, Publisher, Settings
from postdate.broker._declare import declare_topology
from postdate.broker._topology import Names, ladder_topology
from tests.cluster.conftest import NODES, Cluster, cluster
from tests.cluster.proxy import FailoverProxy
from tests.cluster.results import SCENARIOS, Outcome, Results, Scenario
from tests.faults.harness import Ledger, Run, new_prefix, running_worker, tick_for, whereabouts

BULK = 2000
BULK_DELAYS = (2.0, 20.0)  # ladder levels 0-4
STEADY_DELAYS = (0.0, 6.0)
STEADY_PAUSE = 0.02  # between one steady send's confirm and the next send
KILL_AFTER = 7.0  # s after the bulk was confirmed: commands are moving between levels
STEADY_AFTER_KILL = 8.0  # the steady publishers go on this long after the kill
WAIT_DOWN = 20.0  # beyond the last due time, with the node still down
WAIT_BACK = 60.0  # after the node is back, for commands it held
DELIVERY_LIMIT = 5
FAIL_ON_STALL = os.environ.get("CLUSTER_FAIL_ON_STALL", "") == "1"


@dataclass(frozen=True)
class Case:
    """Where the leaders go and which node dies."""

    ladder_on: str
    command_queue_on: str
    killed: str


CASES = {
    "ladder-level leader": Case(ladder_on="rc2", command_queue_on="rc1", killed="rc2"),
    "command-queue leader": Case(ladder_on="rc1", command_queue_on="rc3", killed="rc3"),
}


@dataclass
class Timeline:
    """When things happened (epoch seconds) and what each client saw."""

    killed: float = 0.0
    steady_ended: float = 0.0
    back: float = 0.0
    # (when, which sender, error type) of each send that raised instead of returning
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    via_killed: list[float] | None = None  # confirm times of the steady sender on the proxy
    via_surviving: list[float] | None = None  # ... of the one on a surviving node


@pytest.mark.timeout(360)
@pytest.mark.parametrize("name", SCENARIOS)
async def test_killing_a_leaders_node_loses_no_command(
    rabbit_cluster: Cluster, cluster_results: Results, name: str
) -> None:
    case = CASES[name]
    survivor = next(node for node in NODES if node != case.killed)
    prefix = new_prefix()
    cluster_results.rabbitmq_version = await _declare_placed(rabbit_cluster, prefix, case)
    leaders = await asyncio.to_thread(rabbit_cluster.leaders, prefix)
    placed = {
        "ladder": leaders[Names(prefix).delay_queue(3)],
        "command_queue": leaders[tick_for(prefix).queue],
    }
    assert placed == {"ladder": case.ladder_on, "command_queue": case.command_queue_on}, leaders

    order = [case.killed] + [node for node in NODES if node != case.killed]
    proxy = FailoverProxy([rabbit_cluster.ports[node] for node in order])
    through_proxy = f"amqp://guest:guest@127.0.0.1:{await proxy.start()}/"
    timeline = Timeline()
    try:
        async with running_worker(
            rabbit_cluster.url(survivor),
            "cluster",
            worker_url=through_proxy,
            prefix=prefix,
            prefetch=3000,
            concurrency=64,
            publish_timeout=15,
            delivery_limit=DELIVERY_LIMIT,
        ) as run:
            await _schedule_and_kill(run, rabbit_cluster.url(survivor), case.killed, timeline)
            missing_while_down, held = await _wait_with_node_down(
                run, rabbit_cluster, survivor, timeline
            )
            await asyncio.to_thread(cluster, "restart", case.killed)
            timeline.back = time.time()
            if missing_while_down:
                await run.ledger.wait_all(timeout=WAIT_BACK)
            scenario = _scenario(name, case, placed, run, timeline, missing_while_down, held)
            run.keep_queues = scenario.lost > 0
    finally:
        await proxy.close()
        if timeline.killed and not timeline.back:  # failed between kill and restart
            with contextlib.suppress(AssertionError):  # e.g. the kill itself failed
                await asyncio.to_thread(cluster, "restart", case.killed)
    print(scenario.line())
    for when, which, error in timeline.failures[:3] + timeline.failures[-2:]:
        print(f"  send failed {when - timeline.killed:+.2f}s after the kill ({which}): {error}")
    cluster_results.scenarios.append(scenario)
    assert scenario.lost == 0, scenario.line()
    assert scenario.early == 0, scenario.line()
    assert not (FAIL_ON_STALL and scenario.missing_while_down), scenario.line()


async def _declare_placed(rabbit_cluster: Cluster, prefix: str, case: Case) -> str:
    """Declare the ladder through its chosen node, then the command queue (and its retry
    tiers and poison queue) through its own: each queue's leader is the declaring node.
    Returns the broker's version."""
    app = Ledger().app(tick_for(prefix))
    version = "unknown"
    for node, topology in (
        (case.ladder_on, ladder_topology(prefix)),
        (case.command_queue_on, app.topology(prefix, DELIVERY_LIMIT)),
    ):
        connection = await aio_pika.connect(rabbit_cluster.url(node))
        try:
            await declare_topology(connection, topology)
            version = server_version(connection)
        finally:
            await connection.close()
    return version


async def _schedule_and_kill(run: Run, survivor_url: str, killed: str, timeline: Timeline) -> None:
    """Send the bulk, start the steady senders, kill the node, stop the senders."""
    rng = random.Random()
    ledger = run.ledger
    on_survivor = Settings.load(
        prefix=run.prefix, rabbitmq_url=survivor_url, publish_timeout=run.settings.publish_timeout
    )
    sending = asyncio.Event()
    sending.set()

    async def steady(pub: Publisher, confirms: list[float], first: int, which: str) -> None:
        n = first
        while sending.is_set():
            ledger.sent += 1
            try:
                delay = timedelta(seconds=rng.uniform(*STEADY_DELAYS))
                ledger.confirmed.add(await pub.send(run.tick(n=n), delay))
                confirms.append(time.time())
            except PostdateError as error:
                timeline.failures.append((time.time(), which, f"{type(error).__name__}: {error}"))
            n += 2
            await asyncio.sleep(STEADY_PAUSE)

    timeline.via_killed, timeline.via_surviving = [], []
    async with (
        Publisher(settings=run.settings, connection_name=f"cluster proxy {run.prefix}") as proxied,
        Publisher(settings=on_survivor, connection_name=f"cluster direct {run.prefix}") as direct,
    ):
        items = [
            (run.tick(n=n), timedelta(seconds=rng.uniform(*BULK_DELAYS)))
            for n in range(BULK, 2 * BULK)
        ]
        ledger.sent += len(items)
        ledger.confirmed.update(await proxied.send_many(items))
        kill_at = time.time() + KILL_AFTER
        senders = [
            asyncio.create_task(steady(proxied, timeline.via_killed, 0, "via_killed_node")),
            asyncio.create_task(steady(direct, timeline.via_surviving, 1, "via_surviving_node")),
        ]
        await asyncio.sleep(max(0.0, kill_at - time.time()))
        timeline.killed = time.time()  # the signal follows within ~0.1 s
        await asyncio.to_thread(cluster, "kill", killed)
        await asyncio.sleep(STEADY_AFTER_KILL)
        sending.clear()
        await asyncio.gather(*senders)
        timeline.steady_ended = time.time()


async def _wait_with_node_down(
    run: Run, rabbit_cluster: Cluster, survivor: str, timeline: Timeline
) -> tuple[int, dict[str, int]]:
    """Wait for every command with the killed node still down, until ``WAIT_DOWN`` after
    the last could be due; how many did not come, and the queues of the run that hold
    ready messages then (by passive declare on a surviving node; empty when none is
    missing)."""
    last_due = max(
        timeline.killed - KILL_AFTER + BULK_DELAYS[1], timeline.steady_ended + STEADY_DELAYS[1]
    )
    await run.ledger.wait_all(timeout=max(0.0, last_due + WAIT_DOWN - time.time()))
    missing = len(run.ledger.missing())
    ready: dict[str, int] = {}
    if missing:
        connection = await aio_pika.connect(rabbit_cluster.url(survivor))
        try:
            ready = await whereabouts(connection, run.prefix, run.tick.queue)
        finally:
            await connection.close()
        print(
            f"{missing} commands missing {time.time() - last_due:.0f}s after the last was "
            f"due, the killed node still down; ready by passive declare: {ready}"
        )
    return missing, ready


def _scenario(
    name: str,
    case: Case,
    placed: dict[str, str],
    run: Run,
    timeline: Timeline,
    missing_while_down: int,
    held: dict[str, int],
) -> Scenario:
    ledger = run.ledger
    report = ledger.report(fault_ended=timeline.killed)
    kill = timeline.killed
    outcome: Outcome = "delivered"
    if report.lost:
        outcome = "lost"
    elif missing_while_down:
        outcome = "stalled until node returned"
    handled_at = sorted(at for _, at, _ in ledger.handled)
    first_seen: dict[str, tuple[float, float]] = {}
    for message_id, at, due in ledger.handled:
        first_seen.setdefault(message_id, (at, due))
    return Scenario(
        name=name,
        killed=case.killed,
        how="kill -9",
        leaders=placed,
        sent=report.sent,
        confirmed=report.confirmed,
        send_failures=_failures(timeline),
        handled=report.handled,
        lost=report.lost,
        duplicated=report.duplicated,
        early=report.early,
        missing_while_down=missing_while_down,
        ready_while_down={queue.removeprefix(run.prefix + "."): n for queue, n in held.items()},
        outcome=outcome,
        publish_gap_s={
            "via_killed_node": longest_gap(
                timeline.via_killed or [], kill - 1, timeline.steady_ended
            ),
            "via_surviving_node": longest_gap(
                timeline.via_surviving or [], kill - 1, timeline.steady_ended
            ),
            "normal": longest_gap(timeline.via_killed or [], kill - 2, kill),
        },
        consume_gap_s={
            "worker_via_killed_node": longest_gap(handled_at, kill - 1, kill + 15),
            "normal": longest_gap(handled_at, kill - 2, kill),
        },
        late_beyond_kill_s=percentiles([at - max(due, kill) for at, due in first_seen.values()]),
        node_down_s=round(timeline.back - kill, 1),
    )


def _failures(timeline: Timeline) -> dict[str, dict[str, object]]:
    """Per steady sender: how many sends failed, of which kinds, from when to when."""
    failures: dict[str, dict[str, object]] = {}
    for which in ("via_killed_node", "via_surviving_node"):
        own = [(at, error) for at, sender, error in timeline.failures if sender == which]
        failures[which] = {
            "count": len(own),
            "kinds": dict(Counter(error.split(":")[0] for _, error in own)),
            "first_s": round(own[0][0] - timeline.killed, 2) if own else None,
            "last_s": round(own[-1][0] - timeline.killed, 2) if own else None,
        }
    return failures


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch within ``[start, end]`` without an event at ``times``, rounded
    to milliseconds (the window's ends count as boundaries)."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return round(max(b - a for a, b in itertools.pairwise(edges)), 3)
