"""The envelope: AMQP properties and x-postdate- headers around a command's JSON body."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import pamqp.encode
from aio_pika.abc import AbstractIncomingMessage, HeadersType
from pamqp.common import FieldValue

from postdate._clock import from_epoch_ms, to_epoch_ms
from postdate._command import Command, require_command
from postdate._errors import InvalidMessage
from postdate._outcomes import Reason
from postdate.publish._wire import PublishProperties

HEADER_PREFIX = "x-postdate-"
DUE = "x-postdate-due"  # exact due time, epoch milliseconds
ATTEMPT = "x-postdate-attempt"  # 1 for the first delivery, +1 per retry
SCHEMA = "x-postdate-schema"
QUEUE = "x-postdate-queue"  # destination command queue
DELAY = "x-delay"  # the delayed-message plugin's delay, ms (it negates it on delivery)
SCHEMA_VERSION = 1
MIN_DUE_MS = 0
MAX_DUE_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z, the last datetime Python has
CONTENT_TYPE = "application/json"
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)

# The headers an envelope is made of (the rest of a delivery's are its extra headers).
OWN_HEADERS = frozenset({DUE, ATTEMPT, SCHEMA, QUEUE})
# Broker-written headers that must not travel with a republished copy (reliability rule 3).
BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
        "CC",
        "BCC",
        DELAY,
    }
)
_NOT_EXTRA = BROKER_HEADERS | OWN_HEADERS  # what a decoded envelope keeps as extra headers


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_message_id() -> str:
    """A random (version 4) UUID as text: ``str(uuid.uuid4())``, the same 122 random bits
    from ``os.urandom``, in half the time (no ``UUID`` object on the way)."""
    digits = os.urandom(16).hex()
    return (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{_VARIANT[digits[16]]}{digits[17:20]}-{digits[20:]}"
    )


@dataclass(frozen=True)
class Envelope:
    """One scheduled command as it travels: identity, destination, due time, attempt, body."""

    message_id: str
    type: str
    queue: str
    body: bytes
    due_at: datetime
    attempt: int = 1
    correlation_id: str | None = None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    extra_headers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_command(
        cls,
        command: Command,
        due_at: datetime,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        made_at: datetime | None = None,
    ) -> Envelope:
        """The envelope of a new command, due at ``due_at`` (a fresh uuid4 unless given),
        made at ``made_at`` (default now; give the moment its delay was counted from).

        Raises:
            InvalidArgument: ``command`` is not an instance of a Command subclass.
        """
        require_command(command)
        return cls(
            message_id=message_id or new_message_id(),
            type=command.command_type,
            queue=command.queue,
            body=command.model_dump_json().encode(),
            due_at=due_at,
            correlation_id=correlation_id,
            timestamp=made_at or datetime.now(UTC),
        )

    def headers(self) -> HeadersType:
        """Our own headers (due time, attempt, schema, queue) after any extra ones."""
        return {
            **self.extra_headers,
            DUE: to_epoch_ms(self.due_at),
            ATTEMPT: self.attempt,
            SCHEMA: SCHEMA_VERSION,
            QUEUE: self.queue,
        }

    def properties(
        self, cc: Sequence[str] = (), delay_ms: int | None = None
    ) -> aiormq.spec.Basic.Properties:
        """The AMQP properties of this envelope (``CC`` added when given, and ``x-delay``
        for the delayed-message plugin when ``delay_ms`` is).

        The only place an envelope becomes AMQP properties; the publisher hands them to
        aiormq directly (building an ``aio_pika.Message`` first costs about as much again
        as everything else postdate does per message).
        """
        headers = self.headers()
        if cc:
            headers["CC"] = list(cc)
        if delay_ms is not None:
            headers[DELAY] = delay_ms
        return PublishProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            headers=headers,
            message_id=self.message_id,
            correlation_id=self.correlation_id,
            timestamp=self.timestamp,
            message_type=self.type,
        )

    def next_attempt(self, **extra_headers: Any) -> Envelope:
        """A copy for redelivery: attempt + 1, broker headers already left behind."""
        return replace(
            self,
            attempt=self.attempt + 1,
            extra_headers={**self.extra_headers, **extra_headers},
        )

    @classmethod
    def from_incoming(cls, message: AbstractIncomingMessage) -> Envelope:
        """Decode a delivery's envelope (not yet its body).

        Raises:
            InvalidMessage: a required property or header is missing or malformed.
        """
        headers = message.headers or {}  # only read
        if not message.message_id:
            raise InvalidMessage(Reason.MISSING_HEADER, "message_id property is not set")
        if not message.type:
            raise InvalidMessage(Reason.MISSING_HEADER, "type property is not set")
        due_ms = _int_header(headers, DUE)
        attempt = _int_header(headers, ATTEMPT)
        if attempt < 1:
            raise InvalidMessage(Reason.INVALID_HEADER, f"{ATTEMPT}={attempt} is below 1")
        queue = headers.get(QUEUE)
        if isinstance(queue, bytes):
            queue = queue.decode(errors="replace")
        if not isinstance(queue, str) or not queue:
            raise InvalidMessage(Reason.MISSING_HEADER, f"{QUEUE} header is missing")
        timestamp = message.timestamp or datetime.now(UTC)
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        # without_broker_headers(headers, also=OWN_HEADERS), its union made once: every
        # delivery is decoded, and most carry no header but ours and the broker's.
        extra = {key: value for key, value in headers.items() if key not in _NOT_EXTRA}
        if extra:
            extra = encodable_table(extra)
        if not MIN_DUE_MS <= due_ms <= MAX_DUE_MS:
            raise InvalidMessage(Reason.INVALID_HEADER, f"{DUE}={due_ms} is not a plausible time")
        # cls(...) with every field given, its values already checked: a frozen
        # dataclass's __init__ sets each field through object.__setattr__, which costs
        # every delivery as much again as all of the above (test_envelope_decode.py
        # checks that this is the envelope the constructor makes).
        envelope = object.__new__(cls)
        envelope.__dict__.update(
            message_id=message.message_id,
            type=message.type,
            queue=queue,
            body=message.body,
            due_at=from_epoch_ms(due_ms),
            attempt=attempt,
            correlation_id=message.correlation_id,
            timestamp=timestamp,
            extra_headers=extra,
        )
        return envelope


def _int_header(headers: dict[str, Any], name: str) -> int:
    if name not in headers:
        raise InvalidMessage(Reason.MISSING_HEADER, f"{name} header is missing")
    value = headers[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(Reason.INVALID_HEADER, f"{name}={value!r} is not an integer")
    return value


def copy_properties(
    message: AbstractIncomingMessage, headers: HeadersType
) -> aiormq.spec.Basic.Properties:
    """The properties of a persistent copy of ``message`` that carries ``headers`` instead.

    For copies of deliveries that may not decode as an envelope (retry, poison, replay).
    A per-message TTL and a user id are not copied: the copy must not expire where it is
    parked, nor be refused for a user id that is not the publisher's.
    """
    properties = message.properties
    properties.headers = headers
    properties.delivery_mode = PERSISTENT
    properties.expiration = None
    properties.user_id = None
    return properties


def without_broker_headers(
    headers: HeadersType | None, also: frozenset[str] = frozenset()
) -> HeadersType:
    """``headers`` minus what the broker wrote (reliability rule 3: never carried along)
    and minus ``also``, each value in a form a copy can carry (see :func:`encodable`).

    Dropped before the values are checked: every delivery is decoded, so the check runs
    only on what is kept."""
    dropped = BROKER_HEADERS | also
    return encodable_table({k: v for k, v in (headers or {}).items() if k not in dropped})


def encodable_table(table: dict[Any, Any]) -> dict[str, FieldValue]:
    """``table`` with every key and value made :func:`encodable` (nested ones too)."""
    return {encodable_text(str(key)): encodable(value) for key, value in table.items()}


def encodable(value: Any) -> FieldValue:
    """``value`` as a header value pamqp can encode again, so that a copy can be published.

    A delivery may carry values that pamqp decodes but cannot encode: a long string that
    is not UTF-8 (another client's, handed over as ``bytes``), a decimal or a double out of
    the range pamqp encodes, a time before 1970. Tables and arrays keep their shape, item
    by item; bytes are kept, as a byte array; a string that is not UTF-8 (lone surrogates)
    gets them escaped; anything else that does not encode becomes its ``repr``.
    """
    if isinstance(value, str):
        return encodable_text(value)
    if isinstance(value, dict):
        return encodable_table(value)
    if isinstance(value, list):
        return [encodable(item) for item in value]
    if isinstance(value, bytes):
        return bytearray(value)
    try:
        pamqp.encode.encode_table_value(value)
    except Exception:
        return _stand_in(value)
    return value  # type: ignore[no-any-return]


def encodable_text(text: str) -> str:
    """``text``, with what UTF-8 cannot encode (lone surrogates) backslash-escaped."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


def _stand_in(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__} with a failing __repr__>"
    return encodable_text(text)
