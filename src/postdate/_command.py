"""`Command`: a pydantic model that names the queue it is delivered to."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from postdate._errors import CommandDefinitionError, InvalidArgument

# Queue names are topic-routing words: no empty words, no wildcards. The length cap keeps
# the ladder routing key (56 bytes of bits + the queue) and the retry tier names under 255.
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_QUEUE_LENGTH = 180


def validate_queue_name(queue: str) -> str:
    """Return ``queue`` if it can serve as a command queue name.

    Raises:
        CommandDefinitionError: empty, too long, or not dot-separated words of
            letters, digits, ``_`` and ``-``.
    """
    if len(queue.encode()) > MAX_QUEUE_LENGTH:
        raise CommandDefinitionError(
            f"queue name {queue!r} is longer than {MAX_QUEUE_LENGTH} bytes"
        )
    if not QUEUE_PATTERN.match(queue):
        raise CommandDefinitionError(
            f"queue name {queue!r} must be dot-separated words of letters, digits, '_' or '-'"
        )
    return queue


def require_command(command: object) -> Command:
    """Return ``command`` if it is an instance of a :class:`Command` subclass with a queue.

    Raises:
        InvalidArgument: anything else (a dict, a plain pydantic model, ``Command`` itself).
    """
    if not isinstance(command, Command):
        raise InvalidArgument(
            f"command={command!r:.80} is a {type(command).__name__}, not a postdate Command"
        )
    if not hasattr(type(command), "queue"):
        raise InvalidArgument(
            f"command={command!r:.80} is a bare Command: send an instance of a subclass "
            "that names its queue"
        )
    return command


class Command(BaseModel):
    """Base class of scheduled commands.

    Subclasses name their destination queue, and optionally their type name (default:
    the class name)::

        class ExpireReservation(Command, queue="orders.expire_reservation"):
            order_id: UUID
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue: ClassVar[str]
    command_type: ClassVar[str]

    def __init_subclass__(cls, queue: str | None = None, name: str | None = None, **kw: Any):
        super().__init_subclass__(**kw)
        if queue is not None:
            cls.queue = validate_queue_name(queue)
        elif "queue" not in cls.__dict__ and not hasattr(cls, "queue"):
            raise CommandDefinitionError(
                f"{cls.__name__} needs a queue: class {cls.__name__}(Command, queue='...')"
            )
        cls.command_type = name or cls.__name__
