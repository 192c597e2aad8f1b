"""`Consumer`: the application object that maps command types to handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from postdate._command import Command
from postdate._errors import CommandDefinitionError
from postdate.broker._topology import Topology, command_queue_topology, ladder_topology
from postdate.consume._context import Context
from postdate.consume._retry import RetryPolicy

C = TypeVar("C", bound=Command)
Handler = Callable[[C, Context], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Registration:
    """One handled command type: its class, its handler and its retry policy."""

    command: type[Command]
    handler: Handler[Any]
    policy: RetryPolicy


class Consumer:
    """Handlers by command type; a worker process runs it (``postdate worker MODULE:APP``).

    ::

        app = Consumer()

        @app.handler(ExpireReservation, retries=RetryPolicy(max_attempts=5))
        async def expire(cmd: ExpireReservation, ctx: Context) -> None: ...
    """

    def __init__(self) -> None:
        self.registrations: dict[str, Registration] = {}
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []

    def on_startup(self, hook: Hook) -> Hook:
        """Register ``hook`` to run when a worker starts, before it consumes (e.g. open a
        database pool). An exception stops the worker from starting."""
        self.startup_hooks.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Register ``hook`` to run when a worker stops, after in-flight handlers finished
        (e.g. close the pool). Hooks run in reverse order of registration."""
        self.shutdown_hooks.append(hook)
        return hook

    def handler(
        self, command: type[C], *, retries: RetryPolicy | int | None = None
    ) -> Callable[[Handler[C]], Handler[C]]:
        """Register the decorated coroutine as the handler of ``command``.

        ``retries`` is a :class:`RetryPolicy`, or an int for ``max_attempts`` with the
        default tiers.

        Raises:
            CommandDefinitionError: ``command`` already has a handler in this app, or two
                handled command types share a type name.
        """
        policy = RetryPolicy(max_attempts=retries) if isinstance(retries, int) else retries

        def register(function: Handler[C]) -> Handler[C]:
            name = command.command_type
            if name in self.registrations:
                raise CommandDefinitionError(f"command type {name!r} already has a handler")
            self.registrations[name] = Registration(command, function, policy or RetryPolicy())
            return function

        return register

    def queues(self) -> list[str]:
        """The command queues this app consumes, sorted."""
        return sorted({registration.command.queue for registration in self.registrations.values()})

    def tiers(self, queue: str) -> tuple[timedelta, ...]:
        """Every retry tier any handler on ``queue`` may use, sorted."""
        tiers = {
            tier
            for registration in self.registrations.values()
            if registration.command.queue == queue
            for tier in registration.policy.tiers
        }
        return tuple(sorted(tiers))

    def topology(self, prefix: str, delivery_limit: int) -> Topology:
        """The ladder plus every handled command queue with its retry tiers and poison queue."""
        topology = ladder_topology(prefix)
        for queue in self.queues():
            topology += command_queue_topology(
                prefix,
                queue,
                retry_tiers=self.tiers(queue),
                delivery_limit=delivery_limit,
            )
        return topology
