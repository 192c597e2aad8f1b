"""configure_logging's JSON lines, as a worker writes them (in a process of its own:
structlog is configured once per process)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
import structlog.testing

from postdate.observe import _logs as logs
from postdate.observe._logs import TurnFlushedLogger

SCRIPT = """
import logging
from datetime import UTC, datetime
from uuid import UUID
import structlog
from postdate.observe._logs import configure_logging, emit, get_logger
from postdate._outcomes import Outcome

configure_logging()
log = get_logger("test")
log.info("values", when=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
         id=UUID(int=1), raw=b"xy", outcome=Outcome.HANDLED, text="é")
log.info("counts", outcomes={Outcome.HANDLED: 3})
log.info("big", n=2**70, s={1})
log.debug("hidden")
logging.getLogger("stdlib").warning("a stdlib line")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
log.bind(k="v").warning("bound")
structlog.contextvars.bind_contextvars(request="r-1")
log.bind(k="v").info("same", a=1, b=None)
emit(log.bind(k="v"), "info", "same", {"a": 1, "b": None})
emit(log.bind(k="v"), "debug", "hidden", {"a": 1})
"""


def run_logging(unbuffered: bool) -> list[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stderr.decode().splitlines()


@pytest.mark.parametrize("unbuffered", [False, True])
def test_each_event_is_one_whole_json_line_on_stderr(unbuffered: bool) -> None:
    lines = run_logging(unbuffered)
    assert "a stdlib line" in lines
    events: list[dict[str, Any]] = [json.loads(line) for line in lines if line.startswith("{")]
    names = [event["event"] for event in events]
    assert names == ["values", "counts", "big", "failed", "bound", "same", "same"]
    values, counts, big, failed, bound, logged, emitted = events
    assert values["when"] == "2026-01-02T03:04:05.678901Z"
    assert values["id"] == "00000000-0000-0000-0000-000000000001"
    assert values["raw"] == "b'xy'"
    assert values["outcome"] == "handled"
    assert values["text"] == "é"
    assert values["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", values["timestamp"])
    assert counts["outcomes"] == {"handled": 3}
    assert big["n"] == 2**70  # over 64 bits: written by json.dumps instead of orjson
    assert big["s"] == "{1}"
    assert failed["level"] == "error"
    assert "ZeroDivisionError: division by zero" in failed["exception"]
    assert bound == {**bound, "k": "v", "level": "warning"}
    # emit() writes what the structlog call writes, key order included
    del logged["timestamp"], emitted["timestamp"]
    assert list(emitted.items()) == list(logged.items())
    assert logged == {
        "k": "v",
        "a": 1,
        "b": None,
        "event": "same",
        "request": "r-1",
        "level": "info",
    }


def test_the_text_renderer_writes_the_same_json_for_a_stderr_without_bytes() -> None:
    event = logs.add_utc_now(None, "info", {"event": "e", "n": 1})
    event = logs.format_exc_info(None, "info", event)
    assert json.loads(logs.render_json_text(None, "info", dict(event))) == json.loads(
        logs.render_json_bytes(None, "info", dict(event))
    )
    assert isinstance(event["timestamp"], datetime)
    assert event["timestamp"].tzinfo is UTC


class Collect:
    """A wrapped logger that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, object]] = []

    def info(self, line: object) -> None:
        self.lines.append(("info", line))

    def warning(self, line: object) -> None:
        self.lines.append(("warning", line))


def drop_b(logger: object, method_name: str, event_dict: logs.EventDict) -> logs.EventDict:
    if event_dict.get("b"):
        raise structlog.DropEvent
    return event_dict


def test_emit_runs_the_loggers_processors_filters_its_level_and_honours_drop_event() -> None:
    wrapped = Collect()
    logger = structlog.wrap_logger(
        wrapped,
        processors=[drop_b, lambda _, name, event: f"{name} {sorted(event.items())}"],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    ).bind(k="v")
    logs.emit(logger, "info", "e", {"a": 1})
    logs.emit(logger, "warning", "e", {"a": 2, "b": True})  # dropped
    logs.emit(logger, "debug", "e", {"a": 3})  # below INFO
    logger.info("e", a=1)
    assert wrapped.lines == [("info", "info [('a', 1), ('event', 'e'), ('k', 'v')]")] * 2


def test_emit_is_captured_by_capture_logs() -> None:
    logger = structlog.get_logger("test").bind(k="v")
    with structlog.testing.capture_logs() as captured:
        logs.emit(logger, "warning", "e", {"a": 1})
    assert captured == [{"k": "v", "a": 1, "event": "e", "log_level": "warning"}]


def test_emit_calls_anything_else_the_usual_way() -> None:
    calls: list[tuple[str, dict[str, object]]] = []

    class Plain:
        def info(self, event: str, **fields: object) -> None:
            calls.append((event, fields))

    logs.emit(Plain(), "info", "e", {"a": 1})
    assert calls == [("e", {"a": 1})]


class CountingBuffer(io.BytesIO):
    """A byte stream that counts its flushes and keeps what was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed = b""

    def flush(self) -> None:
        self.flushes += 1
        self.flushed = self.getvalue()


def test_lines_of_one_loop_turn_leave_in_one_flush_at_its_end() -> None:
    buffer = CountingBuffer()
    logger = TurnFlushedLogger(buffer)

    async def one_turn() -> bytes:
        for n in range(3):
            logger.msg(b'{"n":%d}' % n)
        flushed_during_the_turn = buffer.flushed
        await asyncio.sleep(0)  # the turn ends: the flush runs
        return flushed_during_the_turn

    assert asyncio.run(one_turn()) == b""
    assert (buffer.flushes, buffer.flushed) == (1, b'{"n":0}\n{"n":1}\n{"n":2}\n')


def test_a_line_outside_a_loop_is_flushed_at_once() -> None:
    buffer = CountingBuffer()
    logger = TurnFlushedLogger(buffer)
    logger.msg(b"one")
    assert (buffer.flushes, buffer.flushed) == (1, b"one\n")
