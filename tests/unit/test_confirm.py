"""The confirmed-publish path against a stand-in channel: window deadlines, cancellation."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, cast

import aiormq
import pytest
from aio_pika.abc import AbstractRobustChannel

from postdate._errors import PostdateError, PublishTimeout
from postdate.delay._routing import to_queue
from postdate.publish._confirm import ConfirmedChannel, Outgoing, Plan


class Connection:
    async def ready(self) -> None:
        return None


class Underlay:
    """Confirms a publish after ``confirm_after`` seconds (never when None)."""

    def __init__(self, confirm_after: float | None = 0.0) -> None:
        self.connection = Connection()
        self.confirm_after = confirm_after
        self.published: list[str | None] = []

    async def basic_publish(self, body: bytes, **kwargs: Any) -> object:
        self.published.append(kwargs["properties"].message_id)
        if self.confirm_after is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(self.confirm_after)
        return aiormq.spec.Basic.Ack()


class Channel:
    def __init__(self, underlay: Underlay) -> None:
        self.underlay = underlay

    async def ready(self) -> None:
        return None

    async def get_underlay_channel(self) -> Underlay:
        return self.underlay


def confirmed(underlay: Underlay, timeout: float) -> ConfirmedChannel:
    return ConfirmedChannel(cast(AbstractRobustChannel, Channel(underlay)), timeout)


def plan(message_id: str) -> Plan:
    outgoing = Outgoing(b"{}", aiormq.spec.Basic.Properties(message_id=message_id), to_queue("q"))

    def planned(_: datetime) -> Outgoing | PostdateError:
        return outgoing

    return planned


async def test_confirmed_publishes_are_none_in_order() -> None:
    underlay = Underlay()
    channel = confirmed(underlay, timeout=5)
    assert await channel.publish([plan("a")]) == [None]
    assert await channel.publish([plan("b"), plan("c")]) == [None, None]
    assert underlay.published == ["a", "b", "c"]


async def test_an_unconfirmed_window_times_out_at_its_deadline_and_the_task_goes_on() -> None:
    channel = confirmed(Underlay(confirm_after=None), timeout=0.2)
    started = time.monotonic()
    results = await channel.publish([plan("a"), plan("b")])
    assert 0.2 <= time.monotonic() - started < 1.0
    assert all(isinstance(result, PublishTimeout) for result in results)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # no cancellation left pending on the task


async def test_each_window_has_its_own_deadline() -> None:
    underlay = Underlay(confirm_after=0.05)
    channel = confirmed(underlay, timeout=0.3)
    assert await channel.publish([plan("a")]) == [None]  # done well before its deadline
    await asyncio.sleep(0.2)
    underlay.confirm_after = None
    started = time.monotonic()
    [result] = await channel.publish([plan("b")])
    assert isinstance(result, PublishTimeout)
    assert 0.3 <= time.monotonic() - started < 1.0  # its own 0.3 s, not the first's


async def test_a_shorter_timeout_started_later_still_times_out_first() -> None:
    channel = confirmed(Underlay(confirm_after=None), timeout=5)
    slow = asyncio.create_task(channel.publish([plan("slow")]))
    await asyncio.sleep(0.01)
    channel.timeout = 0.1
    started = time.monotonic()
    [result] = await channel.publish([plan("fast")])
    assert isinstance(result, PublishTimeout)
    assert time.monotonic() - started < 1.0
    assert not slow.done()
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_a_cancelled_send_is_cancelled_not_timed_out() -> None:
    channel = confirmed(Underlay(confirm_after=None), timeout=5)
    task = asyncio.create_task(channel.publish([plan("a")]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outer_timeout_is_the_callers_not_a_publish_timeout() -> None:
    channel = confirmed(Underlay(confirm_after=None), timeout=5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await channel.publish([plan("a")])


async def test_publishes_of_one_message_id_go_one_at_a_time() -> None:
    underlay = Underlay(confirm_after=0.02)
    channel = confirmed(underlay, timeout=5)
    first = asyncio.create_task(channel.publish([plan("same")]))
    second = asyncio.create_task(channel.publish([plan("same")]))
    await asyncio.sleep(0.005)
    assert underlay.published == ["same"]  # the second waits for the first's confirm
    assert await first == [None] and await second == [None]
    assert underlay.published == ["same", "same"]
