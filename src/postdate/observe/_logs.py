"""structlog configured once: JSON lines when stderr is not a terminal, console otherwise.

A worker writes one JSON line per message at INFO, so that path is kept cheap: the
dispatcher hands the line's fields to :func:`emit` as one dict, orjson renders the event
(its timestamp included) straight to bytes, and :class:`TurnFlushedLogger` puts it in
stderr's buffer, flushed once per event-loop turn (one ``write`` for the lines of every
message settled in that turn) or at once outside a loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from json import dumps as json_dumps
from typing import Any, BinaryIO

import orjson
import structlog

_configured = False
# Keys that are not str (the worker's outcome counts are keyed by Outcome); UTC as "Z".
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and stdlib logging once; later calls are no-ops."""
    global _configured
    if _configured:
        return
    _configured = True
    render_json = not sys.stderr.isatty() if json is None else json
    stamper: structlog.typing.Processor = add_utc_now
    renderer: structlog.typing.Processor
    factory: Any
    binary = _binary_stderr()
    if render_json and binary is not None:
        renderer, factory = render_json_bytes, TurnFlushedLoggerFactory(binary)
    elif render_json:
        renderer, factory = render_json_text, structlog.PrintLoggerFactory(sys.stderr)
    else:
        stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(sys.stderr)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamper,
            format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """The structlog logger of module ``name`` (configured by :func:`configure_logging`)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


EventDict = MutableMapping[str, Any]
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def emit(logger: Any, method_name: str, event: str, fields: Mapping[str, Any]) -> None:
    """Log ``event`` with ``fields`` at ``method_name`` (``"info"``, ``"warning"``, ...):
    what ``getattr(logger, method_name)(event, **fields)`` does, at about half the cost.

    For the lines a worker writes per message. A structlog call hands its fields on as
    keyword arguments three times before its processors run; this builds the event once
    and runs ``logger``'s processors (whatever they are: ``capture_logs`` swaps them in
    tests) and its wrapped logger as structlog's ``_process_event`` and
    ``_proxy_to_logger`` do. A logger that does not filter by level, or does not carry
    what a structlog logger does, is called the usual way.
    """
    level = _LEVELS.get(method_name)
    processors = getattr(logger, "_processors", None)
    context = getattr(logger, "_context", None)
    wrapped = getattr(logger, "_logger", None)
    effective = getattr(logger, "get_effective_level", None)
    if level is None or processors is None or context is None or effective is None:
        getattr(logger, method_name)(event, **fields)
        return
    if level < effective():
        return
    event_dict: Any = {**context, **fields, "event": event}
    try:
        for processor in processors:
            event_dict = processor(wrapped, method_name, event_dict)
    except structlog.DropEvent:
        return
    if isinstance(event_dict, str | bytes | bytearray):
        getattr(wrapped, method_name)(event_dict)
    elif isinstance(event_dict, tuple):
        args, kwargs = event_dict
        getattr(wrapped, method_name)(*args, **kwargs)
    else:
        getattr(wrapped, method_name)(**event_dict)


def add_utc_now(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Add ``timestamp``: now, as an aware UTC datetime that :func:`render_json_bytes`
    writes in ISO 8601 with a ``Z`` (``2026-01-02T03:04:05.678901Z``, what
    ``TimeStamper(fmt="iso", utc=True)`` writes, for a fraction of its cost)."""
    event_dict["timestamp"] = datetime.now(UTC)
    return event_dict


def format_exc_info(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Run ``structlog.processors.format_exc_info`` on the few lines with ``exc_info``."""
    if "exc_info" not in event_dict:
        return event_dict
    return structlog.processors.format_exc_info(logger, method_name, event_dict)


def render_json_bytes(logger: object, method_name: str, event_dict: EventDict) -> bytes:
    """``event_dict`` as one line of JSON (orjson; :func:`json.dumps` for what orjson
    refuses, such as an integer over 64 bits). Values JSON has no type for are written
    as their ``__structlog__()`` or, failing that, their ``repr``."""
    try:
        return orjson.dumps(event_dict, default=_fallback, option=_JSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json_dumps(event_dict, default=_fallback).encode()


def render_json_text(logger: object, method_name: str, event_dict: EventDict) -> str:
    """:func:`render_json_bytes` as text, for a stderr that takes no bytes."""
    return render_json_bytes(logger, method_name, event_dict).decode()


def _fallback(value: object) -> object:
    if isinstance(value, datetime):  # only json.dumps asks: orjson writes them itself
        return value.isoformat().replace("+00:00", "Z")
    render = getattr(value, "__structlog__", None)
    return render() if callable(render) else repr(value)


class TurnFlushedLogger:
    """structlog's ``BytesLogger`` (a rendered line, a newline, into a byte stream), but
    flushed at the end of the running event loop's turn instead of after every line: the
    lines written in one turn leave in one ``write``. Outside a running loop each line is
    flushed at once."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._flush_on: asyncio.AbstractEventLoop | None = None  # a flush is scheduled there

    def msg(self, message: bytes) -> None:
        """Write ``message`` and a newline; flush now or at the end of this loop turn."""
        with self._lock:
            self._file.write(message + b"\n")
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._file.flush()
                return
            if self._flush_on is loop:
                return
            self._flush_on = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write out what is buffered."""
        with self._lock:
            self._flush_on = None
            self._file.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


class TurnFlushedLoggerFactory:
    """Makes the one :class:`TurnFlushedLogger` of ``file``, whatever logger name is asked."""

    def __init__(self, file: BinaryIO) -> None:
        self._logger = TurnFlushedLogger(file)

    def __call__(self, *args: Any) -> TurnFlushedLogger:
        """The logger (structlog passes the logger name, which does not matter here)."""
        return self._logger


def _binary_stderr() -> BinaryIO | None:
    """The byte stream under ``sys.stderr``, if it has one (a replaced stderr may not)."""
    binary = getattr(sys.stderr, "buffer", None)
    return binary if binary is not None and hasattr(binary, "write") else None
