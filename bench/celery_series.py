"""Celery's native delayed delivery, as series of ``bench.publish`` (the ``bench`` extra).

Celery >= 5.5 with ``task_default_queue_type = "quorum"`` sends a task with a countdown
through kombu's native delayed delivery: 28 quorum queues ``celery_delayed_0..27`` (TTL
2^level s, at-least-once dead-lettering, reject-publish) behind topic exchanges of the
same names, a routing key made of the countdown's 28 bits, and the exchange
``celery_delayed_delivery`` that routes a due task back to its queue. A Celery worker
declares that topology at start; the benchmark declares it the same way (kombu's own
functions), then deletes it (:data:`QUEUES`, :data:`EXCHANGES`): the names are fixed,
Celery publishes to ``celery_delayed_27`` whatever the configuration.

Celery's publisher confirms: off by default (``apply_async`` returns once the frame is
written to the socket; a broker-side rejection or a connection lost before the write
is flushed goes unnoticed). ``broker_transport_options = {"confirm_publish": True}``
makes every publish wait for the broker's ack (a nack raises). Celery never publishes
``mandatory``: an unroutable task is dropped silently either way. There is no bulk
publish: ``group(...).apply_async()`` sends its tasks one ``basic.publish`` at a time on
one producer, each waiting for its confirm when confirms are on.

Celery's calls are synchronous (py-amqp): the benchmark runs them in a thread.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from importlib.metadata import version
from typing import Any

MISSING = (
    "celery is not installed: skipping the Celery series "
    "(install the bench extra: pip install -e '.[bench]')"
)
LEVELS = 28  # kombu's MAX_NUMBER_OF_BITS_TO_USE
QUEUES = tuple(f"celery_delayed_{level}" for level in range(LEVELS))
EXCHANGES = (*QUEUES, "celery_delayed_delivery")
TASK_NAME = "bench.reserve"


def available() -> bool:
    """Whether Celery is installed (the ``bench`` extra)."""
    return importlib.util.find_spec("celery") is not None


def versions() -> dict[str, str]:
    """The installed Celery and kombu versions."""
    return {"celery": version("celery"), "kombu": version("kombu")}


def first_level(countdown: int) -> str:
    """The ``celery_delayed_*`` queue a task with ``countdown`` seconds waits in first."""
    return f"celery_delayed_{countdown.bit_length() - 1}"


def reserve(order_id: str, note: str) -> None:
    """The benchmark's task (never run: the benchmark only schedules)."""


class CeleryClient:
    """A Celery app sending ``bench.reserve`` tasks to the quorum queue ``queue`` (behind a
    topic exchange of the same name, as native delayed delivery requires).

    ``confirm``: ``broker_transport_options = {"confirm_publish": confirm}``.
    """

    def __init__(self, url: str, queue: str, *, confirm: bool) -> None:
        from celery import Celery

        self.queue = queue
        self.confirm = confirm
        self.app = Celery(f"bench-{queue}", broker=url, set_as_current=False)
        self.app.conf.update(
            task_default_queue=queue,
            task_default_exchange=queue,
            task_default_exchange_type="topic",
            task_default_routing_key=queue,
            task_default_queue_type="quorum",
            broker_transport_options={"confirm_publish": confirm},
        )
        self.task = self.app.task(name=TASK_NAME)(reserve)

    @staticmethod
    def settings(confirm: bool) -> dict[str, Any]:
        """The Celery settings a client uses (for the results), ``queue`` aside."""
        return {
            "task_default_queue_type": "quorum",
            "task_default_exchange_type": "topic",
            "broker_transport_options": {"confirm_publish": confirm},
        }

    def declare(self) -> None:
        """What a Celery worker declares at start: the task queue, the delayed-delivery
        levels and exchanges, and the queue's binding to ``celery_delayed_delivery``."""
        from kombu.transport.native_delayed_delivery import (
            bind_queue_to_native_delayed_delivery_exchange,
            declare_native_delayed_delivery_exchanges_and_queues,
        )

        with self.app.connection_for_write() as connection:
            queue = self.app.amqp.queues[self.queue]
            queue.bind(connection.default_channel).declare()
            declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)

    def one_by_one(self, count: int, countdown: int, note: str) -> float:
        """Tasks per second of ``count`` ``apply_async(countdown=...)`` calls."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        started = time.perf_counter()
        for order_id in ids:
            self.task.apply_async(args=(order_id, note), countdown=countdown)
        return count / (time.perf_counter() - started)

    def group(self, count: int, countdown: int, note: str) -> float:
        """Tasks per second of one ``group(...).apply_async(countdown=...)`` of ``count``
        tasks (made before the clock starts)."""
        from celery import group

        tasks = group(self.task.s(str(uuid.uuid4()), note) for _ in range(count))
        started = time.perf_counter()
        tasks.apply_async(countdown=countdown)
        return count / (time.perf_counter() - started)

    def close(self) -> None:
        """Release the app's broker connections (flushing what was written)."""
        self.app.close()
