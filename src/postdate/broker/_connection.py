"""Connecting to the broker: a robust connection, retried with backoff at start-up."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika
import aiormq
import yarl
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from postdate._errors import BrokerUnavailable
from postdate.observe._logs import get_logger

log = get_logger(__name__)

C = TypeVar("C", bound=AbstractConnection)

# aiormq raises AMQPConnectionError (a ConnectionError, so an OSError) both for a refused
# or dropped TCP connection, which is worth retrying, and for a refused login or an
# unsupported protocol, which no retry can fix.
_RETRYABLE = (OSError, ConnectionError, TimeoutError)
_NOT_RETRYABLE = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.IncompatibleProtocolError,
)


def named_url(url: str, connection_name: str) -> str:
    """The URL with ``?name=`` set, so the management UI shows who opened the connection."""
    return str(yarl.URL(url).update_query(name=connection_name))


def redacted(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and error messages)."""
    return str(yarl.URL(url).with_password("***" if yarl.URL(url).password else None))


async def connect(
    url: str, *, name: str, attempts: int = 8, attempt_timeout: float = 10.0
) -> AbstractRobustConnection:
    """Open a robust connection (it reconnects by itself once established).

    Raises:
        BrokerUnavailable: no connection after ``attempts`` tries with exponential backoff.
    """

    async def robust() -> AbstractRobustConnection:
        return await aio_pika.connect_robust(
            named_url(url, name),
            timeout=attempt_timeout,
            reconnect_interval=1.0,
            connection_class=_ClosedOnFailure,
        )

    return await _with_retries(robust, url, attempts)


class _ClosedOnFailure(aio_pika.RobustConnection):
    """A robust connection closed when its first connect fails: aio-pika would otherwise
    leave it open, and its ``__del__`` creates a ``close()`` coroutine that is never
    awaited once the event loop is gone (a "never awaited" warning at a random later
    moment, e.g. in another test)."""

    async def connect(self, timeout: aiormq.abc.TimeoutType = None) -> None:  # noqa: ASYNC109 (aio-pika's signature)
        try:
            await super().connect(timeout)
        except BaseException:
            await self.close()
            raise


async def connect_plain(
    url: str, *, name: str, attempts: int = 8, attempt_timeout: float = 10.0
) -> AbstractConnection:
    """Open a connection that does not reconnect: for an operator's run, which must end
    (and say so) when its connection is lost, not wait for the broker.

    Raises:
        BrokerUnavailable: no connection after ``attempts`` tries with exponential backoff.
    """

    async def plain() -> AbstractConnection:
        return await aio_pika.connect(named_url(url, name), timeout=attempt_timeout)

    return await _with_retries(plain, url, attempts)


async def _with_retries(open_connection: Callable[[], Awaitable[C]], url: str, attempts: int) -> C:
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=(
                retry_if_exception_type(_RETRYABLE) & retry_if_not_exception_type(_NOT_RETRYABLE)
            ),
            reraise=True,
        ):
            with attempt:
                number = attempt.retry_state.attempt_number
                if number > 1:
                    log.warning("broker.connect.retry", url=redacted(url), attempt=number)
                return await open_connection()
    except _NOT_RETRYABLE as exc:
        raise BrokerUnavailable(
            f"RabbitMQ at {redacted(url)} refused the connection (not retried): {exc}; "
            "check the user, password and permissions in RABBITMQ_URL"
        ) from exc
    except _RETRYABLE as exc:
        reason = str(exc) or type(exc).__name__  # a timeout has no message of its own
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {redacted(url)} after {attempts} attempts: {reason}"
        ) from exc
    except aiormq.exceptions.AMQPError as exc:  # e.g. a vhost that does not exist
        raise BrokerUnavailable(
            f"RabbitMQ at {redacted(url)} refused the connection: {exc!r}; "
            "check the vhost and permissions in RABBITMQ_URL"
        ) from exc
    raise AssertionError("unreachable")


async def close_quietly(channel: AbstractChannel) -> None:
    """Close ``channel``, ignoring errors, also one the broker already closed."""
    # A refusal closes the channel on the broker while a robust channel may be reopening
    # it: close either way, so no reopened channel is left behind.
    with contextlib.suppress(Exception):
        await channel.close()
