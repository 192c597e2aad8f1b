"""Reading the existing value out of RabbitMQ's PRECONDITION_FAILED texts."""

from __future__ import annotations

from typing import Any

import pytest

from postdate.broker._mismatch import _ABSENT, parse_inequivalent

PREFIX = "PRECONDITION_FAILED - "


def arg(name: str, kind: str = "queue", target: str = "q", vhost: str = "/") -> str:
    return f"{PREFIX}inequivalent arg '{name}' for {kind} '{target}' in vhost '{vhost}': "


@pytest.mark.parametrize(
    ("message", "argument", "existing"),
    [
        pytest.param(
            arg("x-message-ttl") + "received the value '2000' of type 'signedint' "
            "but current is the value '1000' of type 'signedint'",
            "x-message-ttl",
            1000,
            id="signedint",
        ),
        pytest.param(
            arg("x-delivery-limit") + "received the value '5' of type 'long' "
            "but current is the value '20' of type 'long'",
            "x-delivery-limit",
            20,
            id="long",
        ),
        pytest.param(
            arg("x-message-ttl") + "received the value '1000' of type 'signedint' "
            "but current is the value '-1' of type 'signedint'",
            "x-message-ttl",
            -1,
            id="negative-int",
        ),
        pytest.param(
            arg("durable") + "received 'true' but current is 'false'",
            "durable",
            False,
            id="durable-false",
        ),
        pytest.param(
            arg("durable") + "received 'false' but current is 'true'",
            "durable",
            True,
            id="durable-true",
        ),
        pytest.param(  # as RabbitMQ 3.10.8 words it (seen on this machine's broker)
            arg("x-single-active-consumer") + "received 'false' but current is 'true'",
            "x-single-active-consumer",
            True,
            id="bool",
        ),
        pytest.param(
            arg("x-queue-type") + "received the value 'quorum' of type 'longstr' "
            "but current is the value 'classic' of type 'longstr'",
            "x-queue-type",
            "classic",
            id="longstr",
        ),
        pytest.param(
            arg("x-dead-letter-routing-key") + "received the value 'orders' of type 'longstr' "
            "but current is the value '42' of type 'longstr'",
            "x-dead-letter-routing-key",
            "42",
            id="longstr-digits-stay-str",
        ),
        pytest.param(
            arg("x-dead-letter-exchange") + "received the value 'p.after.3' of type 'longstr' "
            "but current is the value '' of type 'longstr'",
            "x-dead-letter-exchange",
            "",
            id="longstr-empty",
        ),
        pytest.param(
            arg("x-dead-letter-routing-key", target="orders.expire.poison", vhost="tenant-a")
            + "received the value 'it's' of type 'longstr' "
            "but current is the value 'don't' of type 'longstr'",
            "x-dead-letter-routing-key",
            "don't",
            id="quote-inside-value",
        ),
        pytest.param(
            arg("type", kind="exchange", target="p.deliver")
            + "received 'topic' but current is 'fanout'",
            "type",
            "fanout",
            id="exchange-type",
        ),
        pytest.param(
            arg("x-max-length") + "received none but current is the value '100' of type 'long'",
            "x-max-length",
            100,
            id="received-none",
        ),
        pytest.param(
            '(406, "' + arg("x-overflow") + "received the value 'reject-publish' of type "
            "'longstr' but current is the value 'drop-head' of type 'longstr'\")",
            "x-overflow",
            "drop-head",
            id="aiormq-wrapped",
        ),
    ],
)
def test_existing_value(message: str, argument: str, existing: Any) -> None:
    parsed = parse_inequivalent(message)
    assert parsed is not None
    assert parsed[0] == argument
    assert parsed[1] == existing
    assert type(parsed[1]) is type(existing)  # 1 is not True, "42" is not 42


@pytest.mark.parametrize(
    ("message", "argument"),
    [
        pytest.param(
            arg("x-message-ttl")
            + "received the value '2000' of type 'signedint' but current is none",
            "x-message-ttl",
            id="typed-received",
        ),
        pytest.param(
            arg("x-dead-letter-strategy")
            + "received the value 'at-least-once' of type 'longstr' but current is none",
            "x-dead-letter-strategy",
            id="longstr-received",
        ),
        pytest.param(
            arg("alternate-exchange", kind="exchange", target="p.deliver")
            + "received the value 'p.unroutable' of type 'longstr' but current is none",
            "alternate-exchange",
            id="exchange",
        ),
    ],
)
def test_existing_value_absent(message: str, argument: str) -> None:
    parsed = parse_inequivalent(message)
    assert parsed is not None
    assert parsed[0] == argument
    assert parsed[1] is _ABSENT


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("", id="empty"),
        pytest.param("NOT_FOUND - no queue 'q' in vhost '/'", id="not-found"),
        pytest.param(f"{PREFIX}queue 'q' in vhost '/' in exclusive use", id="other-precondition"),
        pytest.param(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q'", id="locked"
        ),
        pytest.param(
            arg("x-message-ttl") + "received the value '2000' of type 'signedint'",
            id="truncated",
        ),
        pytest.param(
            "inequivalent arg 'x-message-ttl' for queue 'q': received none but current is none",
            id="no-vhost",
        ),
    ],
)
def test_unrelated_text(message: str) -> None:
    assert parse_inequivalent(message) is None
