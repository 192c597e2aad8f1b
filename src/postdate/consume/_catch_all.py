"""A worker's part in draining the catch-all queue: commands for its queues waiting there.

Commands land in the catch-all queue (``P.unroutable``) when their queue did not exist at
delivery: sent before any worker declared it, or dead-lettered out of the ladder while a
restarting broker had not yet recovered its bindings. A worker sends on those for its
queues when it starts (:func:`deliver_parked_commands`) and whenever the catch-all
queue grows while it runs (:func:`watch_unroutable`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from aio_pika.abc import AbstractRobustConnection

from postdate.broker._declare import queue_states
from postdate.broker._topology import Names
from postdate.observe._logs import get_logger
from postdate.parking._unroutable import redeliver_unroutable
from postdate.publish._publisher import Publisher

log = get_logger(__name__)


async def deliver_parked_commands(
    connection: AbstractRobustConnection, publisher: Publisher, queues: Collection[str]
) -> int | None:
    """Send on the commands for ``queues`` that wait in the catch-all queue, through
    ``publisher``.

    Returns:
        How many commands stay there (for other queues), or None when the catch-all
        queue could not be read. A failure is logged, not raised: it must not keep the
        worker from consuming.
    """
    try:
        result = await redeliver_unroutable(connection, publisher, queues)
    except Exception as exc:
        log.warning("worker.unroutable.unchecked", error=repr(exc))
        return None
    if result.tally.moved:
        log.warning(
            "worker.unroutable.redelivered",
            commands=len(result.tally.moved),
            detail="commands that found no queue at delivery were sent on",
        )
    if result.tally.error is not None:
        log.error("worker.unroutable.stopped", error=str(result.tally.error))
    return result.tally.parked - len(result.tally.moved)


async def watch_unroutable(
    connection: AbstractRobustConnection,
    publisher: Publisher,
    prefix: str,
    queues: Collection[str],
    interval: float,
) -> None:
    """Until cancelled: every ``interval`` seconds, read the catch-all queue's depth, and
    send on the commands for ``queues`` when it grew since the last look (a broker restart
    can route ladder commands there while their bindings are not yet back). A failed read
    is logged (debug) and tried again at the next look."""
    catch_all = Names(prefix).unroutable
    left: int | None = 0
    while True:
        await asyncio.sleep(interval)
        try:
            state = (await queue_states(connection, [catch_all]))[catch_all]
        except Exception as exc:
            log.debug("worker.unroutable.unread", error=repr(exc))
            continue
        if state is not None and (left is None or state.messages > left):
            left = await deliver_parked_commands(connection, publisher, queues)
