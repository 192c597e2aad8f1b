"""Coalesced acks against the broker: a run of deliveries goes as one multiple ack, and
never covers a delivery still held for its due time."""

from __future__ import annotations

from collections import Counter

from prometheus_client import REGISTRY

from postdate import Consumer, Context, Outcome, Publisher, Settings, Worker
from tests.helpers import Cleanup, Ping, command_for, eventually


async def test_a_held_delivery_survives_the_acks_of_the_deliveries_after_it(
    prefix: str, settings: Settings, publisher: Publisher, cleanup: Cleanup
) -> None:
    cmd = command_for(f"{prefix}.acks")
    app = Consumer()
    handled: Counter[int] = Counter()

    @app.handler(cmd)
    async def count(command: Ping, context: Context) -> None:
        handled[command.n] += 1

    cleanup.track(app.topology(settings.prefix, settings.delivery_limit))
    first = Worker(app, settings, name="test_acks held first")
    await first.start()
    try:
        await publisher.send(cmd(n=0), delay=4.5)  # reaches the worker ~1 s early; held
        await eventually(lambda: held(cmd.queue) == 1, 8, "the held delivery")
        await publisher.send_many((cmd(n=n), 0) for n in range(1, 201))
        await eventually(lambda: len(handled) == 200, 30, "the 200 due at once")
        assert 0 not in handled
    finally:
        await first.stop(grace_period=0)  # the held one is cut off, left unacked
    assert first.outcomes[Outcome.HANDLED] == 200
    second = Worker(app, settings, name="test_acks held second")
    await second.start()
    try:
        await eventually(lambda: handled[0] == 1, 15, "the held command, delivered again")
    finally:
        await second.stop()
    assert handled == Counter(range(201))


def held(queue: str) -> float | None:
    """How many deliveries of ``queue`` this process holds until due."""
    return REGISTRY.get_sample_value("postdate_held", {"queue": queue})
