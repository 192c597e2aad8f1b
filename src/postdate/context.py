"""`Context`: what a handler knows about the message it handles, and how it sends more."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from postdate.command import Command
from postdate.envelope import Envelope
from postdate.publisher import Publisher, Route, When

_FOLLOW_UP_NAMESPACE = uuid.UUID("5b0c1a52-4a8e-4c59-9e57-0f3a2d0f6b31")


@dataclass
class Context:
    """Passed to every handler next to its command.

    ``send`` queues a follow-up command; the worker publishes queued follow-ups with
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
    _publisher: Publisher
    _pending: list[tuple[Envelope, Route]] = field(default_factory=list)

    @functools.cached_property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A logger bound to message_id, type, queue and attempt (bound on first use)."""
        return self._logger.bind(
            message_id=self.message_id, type=self.type, queue=self.queue, attempt=self.attempt
        )

    @classmethod
    def for_envelope(
        cls, envelope: Envelope, publisher: Publisher, log: structlog.typing.FilteringBoundLogger
    ) -> Context:
        return cls(
            message_id=envelope.message_id,
            type=envelope.type,
            queue=envelope.queue,
            attempt=envelope.attempt,
            due_at=envelope.due_at,
            correlation_id=envelope.correlation_id,
            _logger=log,
            _publisher=publisher,
        )

    async def send(
        self,
        command: Command,
        delay: When | None = None,
        *,
        at: datetime | None = None,
        message_id: str | None = None,
    ) -> str:
        """Queue a follow-up command; returns its message id.

        Raises:
            DelayError: the delay cannot be scheduled (raised here, in the handler).
        """
        name = f"{self.message_id}:{len(self._pending)}:{command.queue}:{command.command_type}"
        derived = uuid.uuid5(_FOLLOW_UP_NAMESPACE, name)
        envelope, target = self._publisher.prepare(
            command,
            delay,
            at=at,
            message_id=message_id or str(derived),
            correlation_id=self.correlation_id or self.message_id,
        )
        self._pending.append((envelope, target))
        return envelope.message_id

    async def flush(self) -> None:
        """Publish queued follow-ups and wait for their confirms (called by the worker)."""
        if self._pending:
            await self._publisher.publish_prepared(self._pending)
            self._pending.clear()
