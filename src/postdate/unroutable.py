"""The catch-all queue ``P.unroutable``: commands whose queue did not exist at delivery.

They are kept, not dropped; once the queue exists (``postdate topology declare
MODULE:APP`` or a worker start), :func:`redeliver_unroutable` sends them on.
"""

from __future__ import annotations

from collections import Counter

from aio_pika.abc import AbstractConnection

from postdate.confirm import raise_first
from postdate.envelope import Envelope
from postdate.errors import InvalidMessage
from postdate.publisher import Publisher
from postdate.topology import Names


async def count_unroutable(connection: AbstractConnection, prefix: str) -> Counter[str]:
    """Parked commands per destination queue (they stay parked)."""
    channel = await connection.channel()
    counts: Counter[str] = Counter()
    try:
        parked = await channel.get_queue(Names(prefix).unroutable, ensure=True)
        while (message := await parked.get(no_ack=False, fail=False)) is not None:
            try:
                counts[Envelope.from_incoming(message).queue] += 1
            except InvalidMessage:
                counts["<not a postdate message>"] += 1
        return counts
    finally:
        await channel.close()  # every unacked message goes back


async def redeliver_unroutable(
    connection: AbstractConnection, publisher: Publisher, queue: str | None = None
) -> int:
    """Send parked commands (all, or those for ``queue``) to their queue again, each
    confirmed before it is removed; returns how many were sent.

    A command whose queue still does not exist comes back to the catch-all queue; each
    message is looked at once per call, so that never loops.

    Raises:
        PublishError: a command was not confirmed (it stays parked, as do the rest).
    """
    channel = await connection.channel()
    sent = 0
    try:
        parked = await channel.declare_queue(Names(publisher.names.prefix).unroutable, passive=True)
        waiting = parked.declaration_result.message_count or 0
        for _ in range(waiting):
            message = await parked.get(no_ack=False, fail=False)
            if message is None:
                break
            try:
                envelope = Envelope.from_incoming(message)
            except InvalidMessage:
                continue  # not ours: left in place when the channel closes
            if queue is not None and envelope.queue != queue:
                continue
            raise_first(await publisher.publish_each([envelope]))
            await message.ack()
            sent += 1
        return sent
    finally:
        await channel.close()
