"""Published properties marshal to exactly pamqp's bytes; message ids are uuid4 text."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import aiormq
import pamqp.encode
import pytest

from postdate._command import Command
from postdate.delay import _ladder as ladder
from postdate.publish._envelope import Envelope, new_message_id
from postdate.publish._wire import PublishProperties, encode_table

Stock = aiormq.spec.Basic.Properties
DUE_AT = dt.datetime(2030, 5, 17, 8, 30, 15, 123_456, tzinfo=dt.UTC)


class Expire(Command, queue="orders.expire"):
    order: int


TABLES: list[dict[str, Any]] = [
    {},
    {"b": True, "f": False, "none": None},
    {"small": -1, "short": 300, "ushort": 65535, "long": 2**31 - 1, "ulong": 2**31},
    {"longlong": 2**40, "negative": -(2**40), "due": 1_905_237_015_124},
    {"text": "é" * 10, "empty": "", "words": ["a", "b"], "none_yet": []},
    {"mixed": ["a", 1, 2.5], "nested": {"x": [1, "a"], "y": {"z": True}}},
    {"decimal": decimal.Decimal("1.5"), "float": 1.5, "bytes": bytearray(b"\x00x")},
    {"time": dt.datetime(2020, 1, 1, tzinfo=dt.UTC), "naive": dt.datetime(2020, 1, 1)},
    {"k" * 200: "a key pamqp truncates", "a": "first"},
    {"x-death": [{"count": 1, "queue": "q", "reason": "expired"}], "CC": ["0.1.q"]},
]


@pytest.mark.parametrize("table", TABLES)
def test_tables_encode_to_pamqps_bytes(table: dict[str, Any]) -> None:
    assert encode_table(table) == pamqp.encode.field_table(table)
    assert encode_table(table) == encode_table(table)  # from the cache, the same


@pytest.mark.parametrize(
    "table", [{"huge": 2**70}, {"surrogate": "\ud800"}, {1: "key"}, {"thing": object()}]
)
def test_what_pamqp_refuses_fails_as_in_pamqp(table: dict[Any, Any]) -> None:
    try:
        pamqp.encode.field_table(table)
    except Exception as error:
        stock = error
    else:
        pytest.fail("pamqp encoded it")
    with pytest.raises(type(stock)) as ours:
        encode_table(table)
    assert str(ours.value) == str(stock)


PROPERTIES: list[dict[str, Any]] = [
    {},
    {"headers": {}},
    {"content_type": "", "correlation_id": "", "priority": 0},
    {
        "content_type": "application/json",
        "content_encoding": "gzip",
        "headers": {"a": [1, "b"], "z": None},
        "delivery_mode": 1,
        "priority": 5,
        "correlation_id": "c",
        "reply_to": "r",
        "expiration": "100",
        "message_id": "m",
        "timestamp": dt.datetime(2020, 1, 1),
        "message_type": "t",
        "user_id": "guest",
        "app_id": "app",
    },
]


@pytest.mark.parametrize("fields", PROPERTIES)
def test_properties_marshal_to_pamqps_bytes(fields: dict[str, Any]) -> None:
    ours, stock = PublishProperties(**fields), Stock(**fields)
    assert ours.marshal() == stock.marshal() == Stock.marshal(ours)
    assert ours == stock


@pytest.mark.parametrize("seconds", [0, 1, 300, 604_800, ladder.MAX_DELAY_SECONDS])
@pytest.mark.parametrize("extra", [{}, {"x-postdate-reason": "boom", "x-custom": 7}])
def test_an_envelopes_properties_marshal_to_pamqps_bytes(
    seconds: int, extra: dict[str, Any]
) -> None:
    envelope = Envelope.for_command(Expire(order=1), DUE_AT, correlation_id="corr")
    if extra:
        envelope = envelope.next_attempt(**extra)
    cc = list(ladder.hop_keys(seconds, "orders.expire")) if seconds else []
    properties = envelope.properties(cc)
    assert isinstance(properties, Stock)
    assert properties.marshal() == Stock.marshal(properties)
    fields: dict[str, Any] = dict(properties)
    assert properties.marshal() == Stock(**fields).marshal()


def test_a_header_changed_after_building_is_sent_as_changed() -> None:
    properties = Envelope.for_command(Expire(order=1), DUE_AT).properties(["~>orders.expire"])
    before = properties.marshal()
    assert properties.headers is not None
    properties.headers["x-postdate-attempt"] = 2
    assert properties.marshal() != before
    assert properties.marshal() == Stock.marshal(properties)


def test_message_ids_are_uuid4_text() -> None:
    ids = [new_message_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # every hex digit turns up where the randomness is (not a constant by mistake)
    assert {text[19] for text in ids} == set("89ab")
    assert len({text[0] for text in ids}) == 16
