"""The read lock of a parked queue: one run (a read or a move) on it at a time.

The broker's lock is an exclusive queue named ``<queue>.lock``, which the broker deletes
with the connection that holds it, so an operator killed mid-run never leaves it behind.
An exclusive queue belongs to a connection, so runs in one process (and event loop),
which may share a connection, also take a lock of the process (:func:`local_lock`).
"""

from __future__ import annotations

import asyncio
import weakref
from contextlib import suppress

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustChannel

from postdate._errors import ReadLockBusy
from postdate.broker._connection import close_quietly

LOCK_SUFFIX = ".lock"
LOCK_WAIT_SECONDS = 30.0
LOCK_POLL_SECONDS = 0.2


async def take_lock(connection: AbstractConnection, queue: str, wait: float) -> AbstractChannel:
    """Take the broker's lock of ``queue``, waiting up to ``wait`` seconds for another run
    to release it; returns the channel that holds it (see :func:`release_lock`).

    Raises:
        ReadLockBusy: another run held the lock for longer than ``wait`` seconds.
    """
    lock = queue + LOCK_SUFFIX
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        channel = await connection.channel()
        try:
            await _declare_lock(channel, lock)
            return channel
        except aiormq.exceptions.ChannelLockedResource:
            await close_quietly(channel)
        except BaseException:
            await close_quietly(channel)
            raise
        if asyncio.get_running_loop().time() >= deadline:
            raise ReadLockBusy(
                f"another run on {queue} (a list, replay or purge) did not end "
                f"within {wait:g} s; try again when it has"
            )
        await asyncio.sleep(LOCK_POLL_SECONDS)


async def release_lock(channel: AbstractChannel, queue: str) -> None:
    """Release the lock of ``queue`` that ``channel`` holds: delete the lock queue (while
    the channel is open) and close the channel, ignoring errors."""
    if not channel.is_closed:
        with suppress(Exception):
            await channel.queue_delete(queue + LOCK_SUFFIX)
    await close_quietly(channel)


async def _declare_lock(channel: AbstractChannel, lock: str) -> None:
    if isinstance(channel, AbstractRobustChannel):
        # Not restored after a reconnect: that would take the lock behind our back.
        await channel.declare_queue(lock, exclusive=True, durable=False, robust=False)
    else:
        await channel.declare_queue(lock, exclusive=True, durable=False)


_local_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def local_lock(queue: str) -> asyncio.Lock:
    """The lock of ``queue`` within this process (and event loop): the broker's exclusive
    queue belongs to a connection, and runs on one connection would share it."""
    locks = _local_locks.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(queue, asyncio.Lock())
