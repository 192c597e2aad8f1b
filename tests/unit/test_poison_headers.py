"""Headers of poison and replayed copies, and the helpers that keep them safe and bounded."""

from __future__ import annotations

import os
import socket
import struct
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pamqp.decode
import pamqp.encode
import pytest
from aio_pika.abc import HeadersType

from postdate._outcomes import Reason
from postdate.parking._poison import (
    ATTEMPTS,
    CONSUMER,
    ERROR_MESSAGE,
    ERROR_TYPE,
    FAILED_AT,
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    ORIGIN_QUEUE,
    POISON_HEADERS,
    REASON,
    TRACEBACK,
    bounded,
    consumer_id,
    poison_headers,
    replay_headers,
    safe_repr,
    safe_str,
)
from postdate.publish._envelope import ATTEMPT, BROKER_HEADERS, DUE, QUEUE, SCHEMA

NOW = datetime(2030, 1, 1, 0, 0, 0, 123_000, tzinfo=UTC)
NOW_MS = 1_893_456_000_123
MARK = "...[truncated]"

BROKER: HeadersType = {
    "x-death": [{"queue": "q", "reason": "rejected", "count": 3}],
    "x-first-death-exchange": "",
    "x-first-death-queue": "q",
    "x-first-death-reason": "rejected",
    "x-last-death-exchange": "",
    "x-last-death-queue": "q",
    "x-last-death-reason": "rejected",
    "x-delivery-count": 5,
    "CC": ["key"],
    "BCC": ["hidden"],
}
OWN: HeadersType = {DUE: 1_893_455_000_000, ATTEMPT: 3, SCHEMA: 1, QUEUE: "orders.expire"}


class BadRepr(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr fails")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str fails")


class BadBoth(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr fails")

    def __str__(self) -> str:
        raise RuntimeError("str fails")


class NotAString(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def park(
    headers: HeadersType | None,
    error: BaseException | None = None,
    *,
    now: datetime = NOW,
    reason: Reason = Reason.EXHAUSTED,
) -> HeadersType:
    return poison_headers(
        headers, reason=reason, origin_queue="orders.expire", attempts=3, now=now, error=error
    )


# --- poison_headers ----------------------------------------------------------------------


def test_poison_headers_in_full() -> None:
    parked = park({**BROKER, **OWN, "x-trace": "t-1"}, ValueError("bad amount"))
    assert parked == {
        **OWN,
        "x-trace": "t-1",
        REASON: "attempts-exhausted",
        ERROR_TYPE: "ValueError",
        ERROR_MESSAGE: "bad amount",
        TRACEBACK: "",  # never raised: no traceback
        ATTEMPTS: 3,
        FAILED_AT: NOW_MS,
        CONSUMER: f"{socket.gethostname()}:{os.getpid()}",
        ORIGIN_QUEUE: "orders.expire",
    }


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(None, id="none"),
        pytest.param({}, id="empty"),
        pytest.param(dict(BROKER), id="broker-only"),
    ],
)
def test_poison_headers_without_own_headers(headers: HeadersType | None) -> None:
    parked = park(headers, KeyError("k"))
    assert set(parked) == {*POISON_HEADERS, ORIGIN_QUEUE}


@pytest.mark.parametrize("broker_header", sorted(BROKER_HEADERS))
def test_poison_headers_drop_each_broker_header(broker_header: str) -> None:
    headers: HeadersType = {**OWN, broker_header: "set by the broker"}
    parked = park(headers)
    assert broker_header not in parked
    assert parked[ATTEMPT] == 3
    assert broker_header in headers  # the delivery's headers are not changed


def test_poison_headers_overwrite_stale_poison_headers() -> None:
    stale: HeadersType = {REASON: "old", ERROR_TYPE: "Old", ATTEMPTS: 99, ORIGIN_QUEUE: "other"}
    parked = park({**OWN, **stale}, ValueError("new"), reason=Reason.PERMANENT)
    assert parked[REASON] == "permanent-error"
    assert parked[ERROR_TYPE] == "ValueError"
    assert parked[ATTEMPTS] == 3
    assert parked[ORIGIN_QUEUE] == "orders.expire"


@pytest.mark.parametrize("reason", list(Reason), ids=[reason.name for reason in Reason])
def test_poison_headers_reason_is_the_plain_value(reason: Reason) -> None:
    value = park(OWN, reason=reason)[REASON]
    assert value == reason.value
    assert type(value) is str


@pytest.mark.parametrize(
    ("now", "millis"),
    [
        pytest.param(NOW, NOW_MS, id="utc"),
        pytest.param(datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC), 1_500, id="epoch+1.5s"),
        pytest.param(
            datetime(1970, 1, 1, 2, 0, 1, tzinfo=timezone(timedelta(hours=2))),
            1_000,
            id="other-offset",
        ),
        pytest.param(datetime(2030, 1, 1, 0, 0, 0, 123_456, tzinfo=UTC), NOW_MS + 1, id="sub-ms"),
    ],
)
def test_poison_headers_failed_at_epoch_ms(now: datetime, millis: int) -> None:
    failed_at = park(OWN, now=now)[FAILED_AT]
    assert failed_at == millis
    assert type(failed_at) is int


@pytest.mark.parametrize(
    ("error", "error_type", "message"),
    [
        pytest.param(None, "", "", id="no-error"),
        pytest.param(ValueError("bad"), "ValueError", "bad", id="value-error"),
        pytest.param(KeyError("k"), "KeyError", "'k'", id="key-error-str"),
        pytest.param(BadStr("x"), "BadStr", "BadStr('x')", id="failing-str-uses-repr"),
        pytest.param(
            BadBoth("x"), "BadBoth", "<BadBoth with a failing __repr__>", id="failing-both"
        ),
        pytest.param(BadRepr("fine"), "BadRepr", "fine", id="failing-repr-str-works"),
        pytest.param(NotAString(), "NotAString", "NotAString()", id="str-returns-int"),
        pytest.param(TimeoutError(), "TimeoutError", "", id="empty-message"),
    ],
)
def test_poison_headers_error_type_and_message(
    error: BaseException | None, error_type: str, message: str
) -> None:
    parked = park(OWN, error)
    assert parked[ERROR_TYPE] == error_type
    assert parked[ERROR_MESSAGE] == message


@pytest.mark.parametrize(
    ("length", "cut"),
    [
        pytest.param(10, False, id="short"),
        pytest.param(MAX_MESSAGE_CHARS, False, id="exactly-at-limit"),
        pytest.param(MAX_MESSAGE_CHARS + 1, True, id="one-over"),
        pytest.param(100_000, True, id="huge"),
    ],
)
def test_poison_headers_bound_the_message(length: int, cut: bool) -> None:
    text = "m" * length
    message = park(OWN, RuntimeError(text))[ERROR_MESSAGE]
    assert isinstance(message, str)
    assert len(message) <= MAX_MESSAGE_CHARS
    assert message.endswith(MARK) is cut
    assert (message == text) is not cut
    assert message.startswith("m" * min(length, 100))


def test_poison_headers_traceback_of_a_raised_error() -> None:
    trace = park(OWN, raised(ValueError("bad amount")))[TRACEBACK]
    assert isinstance(trace, str)
    assert trace.startswith("Traceback (most recent call last):")
    assert "in raised" in trace
    assert trace.rstrip().endswith("ValueError: bad amount")


def test_poison_headers_traceback_is_bounded() -> None:
    parked = park(OWN, raised(RuntimeError("t" * 20_000)))
    trace = parked[TRACEBACK]
    assert isinstance(trace, str)
    assert len(trace) <= MAX_TRACEBACK_CHARS
    assert trace.startswith("Traceback (most recent call last):")
    assert trace.endswith(MARK)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(BadStr("x"), id="failing-str"),
        pytest.param(BadRepr("x"), id="failing-repr"),
        pytest.param(BadBoth("x"), id="failing-both"),
    ],
)
def test_poison_headers_of_a_raised_error_that_cannot_be_printed(error: Exception) -> None:
    parked = park(OWN, raised(error))
    trace = parked[TRACEBACK]
    assert isinstance(trace, str)
    assert type(error).__qualname__ in trace
    assert parked[ERROR_TYPE] == type(error).__qualname__


# --- any header value: the poison copy can always be published ---------------------------


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def encoded(headers: HeadersType) -> HeadersType:
    """``headers`` as a consumer of the copy gets them: encoded by pamqp (as the publish
    does; raises if it cannot), then decoded."""
    _, decoded = pamqp.decode.field_table(pamqp.encode.field_table(headers))
    return decoded


def from_another_client(name: str, raw: bytes) -> HeadersType:
    """Headers whose long string ``name`` holds ``raw`` (e.g. not UTF-8), decoded as
    aio-pika hands them to the worker."""
    entry = bytes([len(name)]) + name.encode() + b"S" + struct.pack(">I", len(raw)) + raw
    _, headers = pamqp.decode.field_table(struct.pack(">I", len(entry)) + entry)
    return headers


ODD_VALUES = [
    pytest.param(b"\xff\xfe ok", bytearray(b"\xff\xfe ok"), id="longstr-not-utf8"),
    pytest.param(b"plain", bytearray(b"plain"), id="bytes"),
    pytest.param(
        {"inner": b"\xc3\x28", "fine": "v"},
        {"inner": bytearray(b"\xc3\x28"), "fine": "v"},
        id="table-with-bytes",
    ),
    pytest.param([b"\x80", 1, "a"], [bytearray(b"\x80"), 1, "a"], id="array-with-bytes"),
    pytest.param({"a": [{"b": b"\xff"}]}, {"a": [{"b": bytearray(b"\xff")}]}, id="deep"),
    pytest.param({"k\udcff": 1}, {"k\\udcff": 1}, id="key-lone-surrogate"),
    pytest.param("bad \udcff", "bad \\udcff", id="str-lone-surrogate"),
    pytest.param(Decimal("1.50"), Decimal("1.50"), id="decimal"),
    pytest.param(Decimal(3_000_000_000), "Decimal('3000000000')", id="decimal-beyond-range"),
    pytest.param(Decimal("NaN"), "Decimal('NaN')", id="decimal-nan"),
    pytest.param(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC), id="time"),
    pytest.param(
        datetime(1960, 1, 1, tzinfo=UTC),
        "datetime.datetime(1960, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)",
        id="time-before-1970",
    ),
    pytest.param(1.5, 1.5, id="float"),
    pytest.param(1e300, "1e+300", id="float-too-large"),
    pytest.param(2**64, "18446744073709551616", id="int-beyond-64-bits"),
    pytest.param(-(2**63), -(2**63), id="int64-min"),
    pytest.param(bytearray(b"\x00\xff"), bytearray(b"\x00\xff"), id="bytearray"),
    pytest.param(None, None, id="void"),
    pytest.param(True, True, id="bool"),
    pytest.param("fine", "fine", id="str"),
    pytest.param((1, 2), "(1, 2)", id="tuple"),
    pytest.param(Opaque(), "<opaque>", id="object"),
]


@pytest.mark.parametrize(("value", "carried"), ODD_VALUES)
def test_poison_headers_carry_any_header_value(value: object, carried: object) -> None:
    parked = park({**OWN, "x-odd": value}, ValueError("bad"), reason=Reason.UNKNOWN_TYPE)  # type: ignore[dict-item]
    assert parked["x-odd"] == carried
    assert type(parked["x-odd"]) is type(carried)
    delivered = encoded(parked)  # the copy can be published
    assert delivered[REASON] == "unknown-type"
    assert delivered[ATTEMPT] == 3


def test_poison_headers_carry_every_odd_value_at_once() -> None:
    headers: HeadersType = {f"x-odd-{n}": param.values[0] for n, param in enumerate(ODD_VALUES)}  # type: ignore[misc]
    delivered = encoded(park({**BROKER, **OWN, **headers}, ValueError("bad")))
    assert delivered[REASON] == "attempts-exhausted"
    assert set(delivered) == set(headers) | set(OWN) | set(POISON_HEADERS) | {ORIGIN_QUEUE}


def test_poison_headers_of_a_longstr_from_another_client_that_is_not_utf8() -> None:
    headers = {**OWN, **from_another_client("x-trace", b"\xff\xfe\x00id")}
    assert type(headers["x-trace"]) is bytes  # what pamqp hands over for such a string
    with pytest.raises(TypeError):
        pamqp.encode.field_table(headers)  # ...and cannot encode again: why copies failed
    delivered = encoded(park(headers, KeyError("k"), reason=Reason.PERMANENT))
    assert delivered["x-trace"] == b"\xff\xfe\x00id"  # the same bytes, as a byte array
    assert delivered[REASON] == "permanent-error"
    assert delivered[ORIGIN_QUEUE] == "orders.expire"


def test_poison_headers_of_an_error_whose_text_is_not_utf8() -> None:
    parked = park(OWN, raised(ValueError("no file \udcff\udcfe")))
    delivered = encoded(parked)
    assert delivered[ERROR_MESSAGE] == "no file \\udcff\\udcfe"
    assert "no file \\udcff\\udcfe" in str(delivered[TRACEBACK])


def test_replayed_copy_of_odd_headers_can_be_published() -> None:
    parked = park({**OWN, **from_another_client("x-trace", b"\xff")}, ValueError("bad"))
    replayed = encoded(replay_headers(parked))
    assert replayed == {**OWN, ATTEMPT: 1, "x-trace": b"\xff"}


def test_consumer_id_is_host_and_pid() -> None:
    host, _, pid = consumer_id().rpartition(":")
    assert host == socket.gethostname()
    assert pid == str(os.getpid())


# --- replay_headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "replayed"),
    [
        pytest.param(
            park({**BROKER, **OWN, "x-trace": "t-1"}, ValueError("bad")),
            {**OWN, ATTEMPT: 1, "x-trace": "t-1"},
            id="poison-copy-of-a-command",
        ),
        pytest.param(
            {**OWN, ATTEMPT: 7},
            {**OWN, ATTEMPT: 1},
            id="attempt-reset",
        ),
        pytest.param(
            {DUE: 5, "x-postdate-last-error": "RuntimeError('x')"},
            {DUE: 5, "x-postdate-last-error": "RuntimeError('x')", ATTEMPT: 1},
            id="attempt-added-when-postdate-headers",
        ),
        pytest.param(
            park({**BROKER, "app": "legacy"}, ValueError("bad")),
            {"app": "legacy"},
            id="foreign-message-no-attempt",
        ),
        pytest.param(
            park(None, ValueError("bad")),
            {},
            id="only-poison-headers",
        ),
        pytest.param(dict(BROKER), {}, id="only-broker-headers"),
        pytest.param(None, {}, id="none"),
        pytest.param({}, {}, id="empty"),
        pytest.param(
            {"X-Postdate-Due": 1, "app": "v"}, {"X-Postdate-Due": 1, "app": "v"}, id="case-matters"
        ),
    ],
)
def test_replay_headers(headers: HeadersType | None, replayed: HeadersType) -> None:
    before = dict(headers) if headers is not None else None
    assert replay_headers(headers) == replayed
    assert headers == before  # input left alone


def test_replay_removes_every_poison_header() -> None:
    replayed = replay_headers(park({**BROKER, **OWN}, raised(ValueError("bad"))))
    assert not (set(POISON_HEADERS) | {ORIGIN_QUEUE} | BROKER_HEADERS) & replayed.keys()
    assert replayed[ATTEMPT] == 1


# --- bounded, safe_repr, safe_str --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("", 20, "", id="empty"),
        pytest.param("short", 20, "short", id="under"),
        pytest.param("x" * 20, 20, "x" * 20, id="at-limit"),
        pytest.param("x" * 21, 20, "x" * 6 + MARK, id="one-over"),
        pytest.param(
            "abcdefghijklmnopqrstuvwxyz" * 4, 30, "abcdefghijklmnop" + MARK, id="keeps-head"
        ),
        pytest.param("y" * 10_000, 1_000, "y" * 986 + MARK, id="long"),
    ],
)
def test_bounded(text: str, limit: int, expected: str) -> None:
    result = bounded(text, limit)
    assert result == expected
    assert len(result) <= limit


@pytest.mark.parametrize("limit", [1, 10, 14], ids=["limit-1", "limit-10", "limit-14"])
def test_bounded_never_exceeds_small_limits(limit: int) -> None:
    assert len(bounded("z" * 100, limit)) <= limit


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(ValueError("boom"), "ValueError('boom')", id="plain"),
        pytest.param(BadStr("x"), "BadStr('x')", id="failing-str-repr-works"),
        pytest.param(BadRepr("x"), "<BadRepr with a failing __repr__>", id="failing-repr"),
        pytest.param(BadBoth("x"), "<BadBoth with a failing __repr__>", id="failing-both"),
    ],
)
def test_safe_repr(error: BaseException, expected: str) -> None:
    assert safe_repr(error) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(ValueError("boom"), "boom", id="plain"),
        pytest.param(BadRepr("fine"), "fine", id="failing-repr-str-works"),
        pytest.param(BadStr("x"), "BadStr('x')", id="failing-str"),
        pytest.param(BadBoth("x"), "<BadBoth with a failing __repr__>", id="failing-both"),
        pytest.param(NotAString(), "NotAString()", id="str-returns-int"),
    ],
)
def test_safe_str(error: BaseException, expected: str) -> None:
    assert safe_str(error) == expected
