"""The catch-all queue ``P.unroutable``: commands whose queue did not exist at delivery.

They are kept, not dropped. Once their queue exists, :func:`redeliver_unroutable` sends
them on (a worker does so for its own queues when it starts, and whenever the
catch-all queue grows). Runs go through
:mod:`postdate.parking._parked`: confirm-then-ack, only what was parked when the run started.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from postdate._errors import InvalidMessage
from postdate.broker._declare import queue_exists
from postdate.broker._topology import Names
from postdate.parking._parked import Copy, Progress, Tally, move_parked, no_progress, read_parked
from postdate.publish._envelope import Envelope, copy_properties, without_broker_headers
from postdate.publish._publisher import Publisher

NOT_POSTDATE = "<not a postdate message>"
# How often a worker looks at the catch-all queue's depth (one passive declare).
UNROUTABLE_POLL_SECONDS = 5.0


def destination(message: AbstractIncomingMessage) -> str:
    """The command queue a parked message was meant for, or :data:`NOT_POSTDATE`."""
    try:
        return Envelope.from_incoming(message).queue
    except InvalidMessage:
        return NOT_POSTDATE


async def count_unroutable(
    connection: AbstractConnection, prefix: str, progress: Progress = no_progress
) -> tuple[Counter[str], int]:
    """Parked commands per destination queue (they stay parked), and the depth.

    Raises:
        QueueNotFound: the catch-all queue does not exist (the ladder is not declared).
        ReadLockBusy: another run on it did not end in time.
    """
    messages, parked = await read_parked(connection, Names(prefix).unroutable, progress)
    return Counter(destination(message) for message in messages), parked


@dataclass
class Redelivery:
    """What a redelivery did, and the commands it left because their queue is missing."""

    tally: Tally
    missing: Counter[str] = field(default_factory=Counter)


async def redeliver_unroutable(
    connection: AbstractConnection,
    publisher: Publisher,
    queues: Collection[str] | None = None,
    progress: Progress = no_progress,
) -> Redelivery:
    """Send parked commands (all, or those for ``queues``) straight into their queue,
    each confirmed before it is removed. A command whose queue still does not exist
    stays parked and is counted in ``Redelivery.missing``.

    Raises:
        QueueNotFound: the catch-all queue does not exist (the ladder is not declared).
        ReadLockBusy: another run on it did not end in time.
    """
    existing: dict[str, bool] = {}
    missing: Counter[str] = Counter()

    async def copy_of(message: AbstractIncomingMessage) -> Copy | None:
        queue = destination(message)
        if queue == NOT_POSTDATE or (queues is not None and queue not in queues):
            return None
        if queue not in existing:
            existing[queue] = await queue_exists(connection, queue)
        if not existing[queue]:
            missing[queue] += 1
            return None
        headers = without_broker_headers(message.headers)
        return Copy(message.body, copy_properties(message, headers), queue)

    unroutable = Names(publisher.names.prefix).unroutable
    tally = await move_parked(connection, unroutable, publisher, copy_of, progress)
    return Redelivery(tally, missing)
