"""Shared fixtures: the broker (reachability checked once), a prefix per test, settings,
connections named after the test, a publisher, and cleanup of everything declared.

Integration tests use these fixtures and so need a RabbitMQ at ``RABBITMQ_URL``: without
one they are skipped locally and fail when ``CI=true``.

The ``backend`` fixture (``ladder``) is the backend of ``settings`` and so of the
``publisher`` and of workers; a behaviour test runs on both with
``@pytest.mark.parametrize("backend", BACKENDS)``. ``plugin`` runs against the broker at
``POSTDATE_PLUGIN_URL`` (one with the delayed-message plugin), and is skipped without it.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from postdate._settings import Settings
from postdate.broker._connection import redacted
from postdate.publish._publisher import Publisher
from tests.helpers import NO_PLUGIN, PLUGIN_URL, Cleanup, amqp_url, broker_address, broker_url


@functools.cache
def _reachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None if an AMQP broker answers on ``host:port``, else the reason it did not.

    Sends the AMQP 0-9-1 protocol header and expects the start of a Connection.Start
    frame: a bare TCP accept (e.g. by a proxy) is not enough.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            first = sock.recv(1)
    except OSError as exc:
        return str(exc)
    if first not in (b"\x01", b"A"):  # a method frame, or the broker's own protocol header
        return f"no AMQP answer (got {first!r})"
    return None


@pytest.fixture
def backend() -> str:
    """The backend of the test's settings: the ladder, unless the test parametrizes it."""
    return "ladder"


@pytest.fixture
def rabbitmq(backend: str) -> str:
    """The broker URL, once it was found listening (checked once per session): for the
    plugin backend the broker at ``POSTDATE_PLUGIN_URL`` (skipped without one)."""
    url = broker_url()
    if backend == "plugin":
        url = os.environ.get(PLUGIN_URL, "")
        if not url:
            pytest.skip(NO_PLUGIN)
    host, port = broker_address(url)
    problem = _reachable(host, port)
    if problem is not None:
        message = f"RabbitMQ not reachable at {redacted(url)} ({problem})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true requires a broker", pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture
def test_name(request: pytest.FixtureRequest) -> str:
    """A connection name that identifies the running test, e.g. ``pytest test_x[1]``."""
    return f"pytest {request.node.name}"


@pytest.fixture(name="amqp_url")
def amqp_url_fixture(rabbitmq: str, test_name: str) -> str:
    """``RABBITMQ_URL`` with ``?name=<test>`` so the management UI shows who opened it."""
    return amqp_url(test_name, rabbitmq)


@pytest.fixture
def prefix() -> str:
    """A prefix of broker object names unique to this test (starts with a letter)."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(rabbitmq: str, prefix: str, backend: str) -> Settings:
    return Settings.load(prefix=prefix, rabbitmq_url=rabbitmq, connect_attempts=3, backend=backend)


@pytest.fixture
async def cleanup(rabbitmq: str, prefix: str, test_name: str) -> AsyncIterator[Cleanup]:
    """Tracks topologies; at teardown deletes them and the prefix's ladder."""
    tracker = Cleanup(url=rabbitmq, prefix=prefix, connection_name=test_name)
    yield tracker
    await tracker.run()


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    """A robust connection named after the test, closed at teardown."""
    conn = await aio_pika.connect_robust(amqp_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def publisher(
    settings: Settings, cleanup: Cleanup, test_name: str
) -> AsyncIterator[Publisher]:
    """A started publisher on the test's prefix (ladder declared, deleted at teardown)."""
    async with Publisher(settings=settings, connection_name=test_name) as pub:
        yield pub
