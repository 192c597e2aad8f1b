"""The operator's poison tools on 2,000 parked messages with a worker running, through
the real `postdate` command (a subprocess), as an on-call operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection

from postdate import Consumer, Context, Outcome, Publisher, RetryPolicy, Settings, Worker
from postdate.broker._topology import poison_queue
from tests.helpers import Cleanup, Ping, command_for, eventually, queue_depth
from tests.integration.test_cli import POSTDATE, ROOT

PARKED = 2_000
UNKNOWN = 500  # of them, of a type the worker does not handle: parked again on replay


class Permanent(Exception):
    pass


@dataclass
class Shop:
    """A worker whose handler fails while ``failing`` says so, and what it saw."""

    queue: str
    worker: Worker
    handled: list[str] = field(default_factory=list)
    failing: bool = True


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run `postdate ARGS` without blocking the event loop the worker runs on."""
    process = await _spawn(settings, *args)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _spawn(settings: Settings, *args: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RABBITMQ_URL": settings.url,
        "POSTDATE_PREFIX": settings.prefix,
    }
    return await asyncio.create_subprocess_exec(
        POSTDATE, *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def cli_json(settings: Settings, *args: str) -> Any:
    code, out, err = await cli(settings, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
async def shop(
    prefix: str, settings: Settings, publisher: Publisher, cleanup: Cleanup
) -> AsyncIterator[Shop]:
    """2,000 messages parked by a running worker, of three reasons."""
    known = command_for(f"{prefix}.shop", name="Expire")
    unknown = command_for(known.queue, name="Unknown")
    app = Consumer()
    shop = Shop(known.queue, Worker(app, settings, name=f"{prefix} shop worker"))

    @app.handler(known, retries=RetryPolicy(max_attempts=1, permanent=(Permanent,)))
    async def expire(command: Ping, context: Context) -> None:
        if shop.failing:
            raise (Permanent if command.n % 3 == 0 else RuntimeError)(f"order {command.n}")
        shop.handled.append(context.message_id)

    cleanup.track(app.topology(prefix, settings.delivery_limit))
    await shop.worker.start()
    try:
        await publisher.send_many([(known(n=n), 0) for n in range(PARKED - UNKNOWN)])
        await publisher.send_many([(unknown(n=n), 0) for n in range(UNKNOWN)])
        await eventually(lambda: shop.worker.outcomes[Outcome.POISONED] == PARKED, 30, "all parked")
        yield shop
    finally:
        await shop.worker.stop(grace_period=1)


async def parked_ids(settings: Settings, queue: str) -> list[str]:
    listing = await cli_json(settings, "poison", "list", queue, "--limit", "100000")
    return [entry["message_id"] for entry in listing["entries"]]


async def test_list_show_replay_by_filter_then_all_while_the_worker_parks_again(
    settings: Settings, shop: Shop, connection: AbstractRobustConnection
) -> None:
    code, out, err = await cli(settings, "poison", "list", shop.queue)
    assert code == 0, err
    assert len(out.splitlines()) == 101
    assert out.splitlines()[-1] == (
        f"showing 100 of 2,000 matching; 2,000 parked in {poison_queue(shop.queue)}"
    )

    # Two operators list at once: each sees every message.
    both = await asyncio.gather(*(cli_json(settings, "poison", "list", shop.queue) for _ in "ab"))
    assert [(listing["parked"], listing["matching"]) for listing in both] == [(PARKED, PARKED)] * 2
    reasons = await cli_json(settings, "poison", "list", shop.queue, "--limit", "100000")
    assert Counter(entry["reason"] for entry in reasons["entries"]) == {
        "unknown-type": UNKNOWN,
        "permanent-error": 500,
        "attempts-exhausted": 1000,
    }

    one = reasons["entries"][0]["message_id"]
    code, out, err = await cli(settings, "poison", "show", shop.queue, one)
    assert code == 0, err
    assert f"message_id: {one}" in out and "traceback: Traceback" in out

    # By filter: the unknown type is parked again at once, and moved once all the same.
    code, out, err = await cli(settings, "poison", "replay", shop.queue, "--type", "Unknown")
    assert code == 0, err
    assert out.startswith(f"replayed {UNKNOWN} of {UNKNOWN} matching (2,000 parked"), out
    await eventually(
        lambda: shop.worker.outcomes[Outcome.POISONED] == PARKED + UNKNOWN, 20, "parked again"
    )

    # All, with the worker healthy for the known type: the unknown are parked again.
    shop.failing = False
    code, out, err = await cli(settings, "poison", "replay", shop.queue, "--all")
    assert code == 0, err
    assert out.startswith(f"replayed {PARKED:,} of {PARKED:,} matching"), out
    await eventually(lambda: len(shop.handled) == PARKED - UNKNOWN, 20, "handled after replay")
    await eventually(
        lambda: shop.worker.outcomes[Outcome.POISONED] == PARKED + 2 * UNKNOWN, 20, "parked"
    )
    assert len(set(shop.handled)) == len(shop.handled)  # each moved exactly once
    assert await queue_depth(connection, poison_queue(shop.queue)) == UNKNOWN


async def test_a_replay_killed_midway_loses_nothing(settings: Settings, shop: Shop) -> None:
    every = set(await parked_ids(settings, shop.queue))
    assert len(every) == PARKED
    shop.failing = False
    replay = await _spawn(settings, "poison", "replay", shop.queue, "--all")
    await eventually(lambda: len(shop.handled) > 0, 20, "the replay under way")
    replay.send_signal(signal.SIGKILL)
    out, _ = await replay.communicate()
    assert replay.returncode == -signal.SIGKILL
    assert b"replayed" not in out, "the replay ended before it was killed"

    await asyncio.sleep(1)  # what the replay had sent is handled (or parked again)
    still_parked = set(await parked_ids(settings, shop.queue))
    assert every <= still_parked | set(shop.handled), "a message was lost"


async def test_purge_by_filter_then_all(settings: Settings, shop: Shop) -> None:
    code, out, err = await cli(
        settings, "poison", "purge", shop.queue, "--yes", "--reason", "unknown-type"
    )
    assert code == 0, err
    assert out.startswith(f"purged {UNKNOWN} of {UNKNOWN} matching"), out
    code, out, err = await cli(settings, "poison", "purge", shop.queue, "--yes")
    assert code == 0, err
    assert out.startswith(f"purged {PARKED - UNKNOWN:,} of {PARKED - UNKNOWN:,} matching"), out
    assert (await cli_json(settings, "poison", "list", shop.queue))["parked"] == 0


async def test_operator_mistakes_are_one_line_and_a_nonzero_exit(
    settings: Settings, shop: Shop
) -> None:
    cases = {
        ("poison", "replay", shop.queue, "--id", "nosuch"): (1, "not parked"),
        ("poison", "show", shop.queue, "nosuch"): (1, "no parked message nosuch"),
        ("poison", "list", poison_queue(shop.queue)): (2, "give its command queue"),
        ("poison", "list", f"{shop.queue}-typo"): (2, "no poison queue"),
        ("poison", "purge", shop.queue): (2, "add --yes"),
        ("poison", "replay", shop.queue): (2, "say which messages"),
        ("status", "no.such:app"): (2, "cannot import"),
    }
    for args, (expected, words) in cases.items():
        code, _, err = await cli(settings, *args)
        assert (code, len(err.strip().splitlines())) == (expected, 1), (args, err)
        assert words in err and "Traceback" not in err, (args, err)


async def test_status_names_the_poison_queue_without_the_app_and_exits_1(
    settings: Settings, shop: Shop
) -> None:
    report = await cli(settings, "status", "--json")
    assert report[0] == 1
    status = json.loads(report[1])
    assert status["attention"] == [poison_queue(shop.queue)]
    [entry] = status["queues"]
    assert entry["poison"]["messages"] == PARKED and entry["queue"]["consumers"] == 1
    code, out, _ = await cli(settings, "status")
    assert code == 1 and f"attention: messages wait in {poison_queue(shop.queue)}" in out


async def test_broker_down_fails_fast_in_one_line(tmp_path: Path) -> None:
    down = Settings.load(rabbitmq_url="amqp://guest:guest@127.0.0.1:1/", prefix="down")
    started = asyncio.get_running_loop().time()
    code, _, err = await cli(down, "status")
    assert code == 2 and err.count("\n") == 1 and "cannot reach RabbitMQ" in err, err
    assert asyncio.get_running_loop().time() - started < 5
