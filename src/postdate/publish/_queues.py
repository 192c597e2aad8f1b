"""What a publisher makes sure of before its first send to a command queue.

A command queue no worker has declared yet (the first deploy) is declared, with its
poison queue, as its worker declares it, a warning is logged, and the queue is added to
the registry (for ``postdate status``). The backend then makes the queue reachable (the
plugin binds it on its exchange: it cannot honour ``mandatory``).
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractRobustConnection

from postdate._errors import PublisherNotStarted, PublishTimeout
from postdate._settings import Settings
from postdate.broker._declare import declare_topology, exchange_exists, queue_exists
from postdate.broker._registry import register
from postdate.broker._topology import Names, command_queue_topology
from postdate.delay._backend import Backend
from postdate.observe._logs import get_logger

log = get_logger(__name__)


class QueueCheck:
    """The command queues a publisher has made sure of, and those it declared."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = Names(settings.prefix)
        self.seen: set[str] = set()
        self.unregistered: set[str] = set()
        # Command queues the publisher had to declare: no worker had declared them.
        self.declared: list[str] = []

    def needed(self, queues: set[str]) -> bool:
        """Whether :meth:`ensure` has anything to do for ``queues``."""
        return bool(self.unregistered) or not queues <= self.seen

    async def ensure(
        self,
        connection: AbstractRobustConnection | None,
        backend: Backend,
        queues: set[str],
        declare: bool = True,
    ) -> None:
        """Make sure ``queues`` exist (declaring those missing, unless not ``declare``) and
        that ``backend`` can reach them, then register what was declared.

        Raises:
            PublisherNotStarted: no ``connection`` (the publisher is not started).
            PublishTimeout: this took longer than the publish timeout.
            PublishReturned: the plugin backend could not bind a queue that does not exist.
            TopologyMismatch: see :func:`~postdate.broker._declare.declare_topology`.
        """
        new = queues - self.seen
        if not new and not self.unregistered:
            return
        if connection is None:
            raise PublisherNotStarted("Publisher is not started: use `async with Publisher(...)`")
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                await self._declare_missing(connection, backend, new, declare)
        except TimeoutError:
            raise PublishTimeout(
                f"could not make sure queue(s) {sorted(new)} exist within "
                f"{self.settings.publish_timeout} s; nothing was published"
            ) from None
        await self._register(connection)

    async def _declare_missing(
        self, connection: AbstractRobustConnection, backend: Backend, new: set[str], declare: bool
    ) -> None:
        missing = [queue for queue in sorted(new) if not await queue_exists(connection, queue)]
        prefix = self.settings.prefix
        if missing and not declare:
            # The ladder's deliver exchange sends them to the catch-all queue; the plugin,
            # which cannot, refuses them here (PublishReturned). Looked at again next time.
            await backend.prepare(connection, prefix, new)
            self.seen |= new - set(missing)
            return
        if missing and not await exchange_exists(connection, self.names.deliver):
            # No ladder: a ladder publish is returned, and its error says to declare it;
            # the plugin's, not mandatory, is refused here (a missing queue is not bound).
            await backend.prepare(connection, prefix, new)
            return
        for queue in missing:
            await self._declare_command_queue(connection, queue)
        await backend.prepare(connection, prefix, new)
        self.unregistered |= set(missing)
        self.seen |= new

    async def _register(self, connection: AbstractRobustConnection) -> None:
        """Add the queues this publisher declared to the registry; a failure is logged and
        tried again on the next send (it must not fail this one)."""
        if not self.unregistered:
            return
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                await register(connection, self.settings.prefix, self.unregistered)
        except Exception as exc:
            log.warning(
                "publisher.register.failed", queues=sorted(self.unregistered), error=repr(exc)
            )
            return
        self.unregistered.clear()

    async def _declare_command_queue(
        self, connection: AbstractRobustConnection, queue: str
    ) -> None:
        """Declare ``queue`` and its poison queue as a worker does (same settings, same
        arguments), and say so loudly: no worker has declared it yet."""
        topology = command_queue_topology(
            self.settings.prefix, queue, retry_tiers=(), delivery_limit=self.settings.delivery_limit
        )
        await declare_topology(connection, topology)
        self.declared.append(queue)
        log.warning(
            "publisher.declared_queue",
            queue=queue,
            detail="no worker has declared this queue yet: its commands wait there for "
            "one (is the queue name right?)",
        )
