"""`Context`: what a handler knows about the message it handles, and its follow-ups."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from postdate._command import Command
from postdate.delay import _routing as scheduling
from postdate.delay._routing import When
from postdate.publish._envelope import Envelope

_FOLLOW_UP_NAMESPACE = uuid.UUID("5b0c1a52-4a8e-4c59-9e57-0f3a2d0f6b31")


@dataclass
class Context:
    """Passed to every handler next to its command.

    :meth:`follow_up` queues a command; the worker publishes queued follow-ups with
    confirms after the handler returns and before it acks the current message, so a
    crash in between yields a duplicate, never a loss. A follow-up's message id is
    derived from the current message id, so redeliveries repeat the same ids.
    """

    message_id: str
    type: str
    queue: str
    attempt: int
    due_at: datetime
    correlation_id: str | None
    _logger: structlog.typing.FilteringBoundLogger
    follow_ups: list[Envelope] = field(default_factory=list)

    @functools.cached_property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A logger bound to message_id, type, queue and attempt (bound on first use)."""
        return self._logger.bind(
            message_id=self.message_id, type=self.type, queue=self.queue, attempt=self.attempt
        )

    @classmethod
    def for_envelope(
        cls, envelope: Envelope, log: structlog.typing.FilteringBoundLogger
    ) -> Context:
        """The context of a handler call for ``envelope``."""
        return cls(
            message_id=envelope.message_id,
            type=envelope.type,
            queue=envelope.queue,
            attempt=envelope.attempt,
            due_at=envelope.due_at,
            correlation_id=envelope.correlation_id,
            _logger=log,
        )

    def follow_up(
        self,
        command: Command,
        delay: When | None = None,
        *,
        at: datetime | None = None,
        message_id: str | None = None,
    ) -> str:
        """Queue ``command`` to be sent once the handler returns; returns its message id.

        The worker publishes it (confirmed) before it acks the current message; if the
        handler raises, nothing queued here is sent. The follow-up carries the current
        correlation id (or, without one, the current message id).

        Raises:
            DelayError: the delay cannot be scheduled (raised here, in the handler).
            InvalidArgument: ``command`` is not an instance of a Command subclass.
        """
        name = f"{self.message_id}:{len(self.follow_ups)}:{command.queue}:{command.command_type}"
        now = datetime.now(UTC)
        envelope = Envelope.for_command(
            command,
            scheduling.due_time(now, delay, at),
            made_at=now,
            message_id=message_id or str(uuid.uuid5(_FOLLOW_UP_NAMESPACE, name)),
            correlation_id=self.correlation_id or self.message_id,
        )
        self.follow_ups.append(envelope)
        return envelope.message_id

    async def send(
        self,
        command: Command,
        delay: When | None = None,
        *,
        at: datetime | None = None,
        message_id: str | None = None,
    ) -> str:
        """:meth:`follow_up`, awaitable: despite its name it sends nothing by itself, it
        queues a follow-up that the worker publishes before it acks the current message.

        Raises:
            DelayError: the delay cannot be scheduled.
        """
        return self.follow_up(command, delay, at=at, message_id=message_id)
