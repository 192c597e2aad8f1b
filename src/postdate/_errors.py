"""The error tree: every error postdate raises on purpose derives from :class:`PostdateError`.

Errors about a bad argument also derive from the matching builtin (``ValueError`` or
``TypeError``), so callers who catch those keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PostdateError(Exception):
    """Base of every error raised by postdate."""


class ConfigError(PostdateError, ValueError):
    """A setting is missing or invalid; raised at start-up, before any connection."""


class MetricsPortUnavailable(ConfigError):
    """The worker cannot listen on its metrics port (``POSTDATE_METRICS_PORT``): it is in
    use or not allowed. Raised by ``Worker.start`` before it opens anything."""


class InvalidArgument(PostdateError, ValueError):
    """A function or class got an argument it cannot use (a bad retry policy, batch size...)."""


class DelayError(InvalidArgument):
    """A delay or due time that cannot be scheduled (too long, naive datetime, negative)."""


class CommandDefinitionError(PostdateError, TypeError):
    """A :class:`~postdate.Command` subclass is declared wrongly (bad or missing queue name)."""


class BrokerUnavailable(PostdateError):
    """The broker could not be reached after all connection attempts."""


class TopologyMismatch(PostdateError):
    """A queue or exchange exists on the broker with other arguments than postdate declares.

    ``differences`` maps each differing argument to ``(declared, existing)``; ``None``
    stands for "not set".
    """

    def __init__(self, name: str, differences: Mapping[str, tuple[Any, Any]], detail: str = ""):
        self.name = name
        self.differences = dict(differences)
        listed = ", ".join(
            f"{arg}: declared {want!r}, existing {have!r}"
            for arg, (want, have) in self.differences.items()
        )
        message = f"{name!r} exists with other arguments ({listed or detail})"
        super().__init__(
            message + "; delete it or declare it with a different prefix/name to migrate"
        )


class PublishError(PostdateError):
    """A publish was not confirmed by the broker."""


class PublisherNotStarted(PostdateError, RuntimeError):
    """``send`` was called before ``start``/``async with``, or after ``close``."""


class PublishNacked(PublishError):
    """The broker answered a publish with basic.nack (e.g. a full queue with reject-publish)."""


class PublishReturned(PublishError):
    """The broker returned a mandatory publish: nothing was bound to its routing key."""

    def __init__(self, exchange: str, routing_key: str, reply_text: str):
        self.exchange = exchange
        self.routing_key = routing_key
        self.reply_text = reply_text
        super().__init__(
            f"publish to exchange {exchange!r} with routing key {routing_key!r} was returned "
            f"({reply_text}); is the topology declared? run `postdate topology declare`"
        )


class PublishInterrupted(PublishError):
    """The connection or channel was lost before the broker confirmed the publish.

    The publisher publishes such a message again on the reopened channel within the
    publish timeout; past it, the caller gets :class:`PublishTimeout`.
    """


class PublishUnencodable(PublishError):
    """The message could not be encoded as AMQP (a header value of a type AMQP has no
    encoding for); nothing was sent, and sending it again cannot help."""


class PublishTimeout(PublishError):
    """The broker did not confirm a publish within the publish timeout.

    The message **may have arrived**: publish it again with the same message id (a
    duplicate at worst). The outbox relay does exactly that: the row stays pending.
    """


class InvalidMessage(PostdateError):
    """A delivery cannot be decoded into a command (bad body, headers or type).

    ``reason`` is the :class:`~postdate.Reason` it is parked under in the poison queue.
    """

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class QueueNotFound(PostdateError):
    """A queue an operation needs does not exist on the broker."""


class ReadLockBusy(PostdateError):
    """Another operator's read or move of the same parked queue did not end in time."""


class UnknownCommand(PostdateError, LookupError):
    """No scheduled command has this message id (not in the outbox, never recorded)."""


class CancelTooLate(PostdateError):
    """The command was already handled (or its handler was running): nothing was changed
    for it. ``result`` says what it did."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class CommandCancelled(PostdateError):
    """The command was cancelled: rescheduling it would bring it back."""
