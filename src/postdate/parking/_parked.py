"""Reading and moving parked messages: poison queues and the catch-all queue.

A run (a read or a move) first takes the queue's read lock
(:mod:`postdate.parking._lock`): a second run on the same queue waits for the first to
end. The run notes the queue's depth and consumes exactly that many messages, in order:
those parked when it started, never one that was parked again while it ran. What it
reads but does not remove is held unacked only while it runs. A move publishes a copy,
waits for the broker's confirm, and only then acks (removes) the original: a run killed
at any point leaves each message parked, moved, or both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Self

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from postdate._errors import PostdateError, QueueNotFound, ReadLockBusy
from postdate.broker._connection import close_quietly
from postdate.broker._declare import queue_states
from postdate.observe._logs import get_logger
from postdate.parking._lock import (
    LOCK_POLL_SECONDS,
    LOCK_WAIT_SECONDS,
    local_lock,
    release_lock,
    take_lock,
)

if TYPE_CHECKING:
    from postdate.publish._publisher import Publisher

Properties = aiormq.spec.Basic.Properties

log = get_logger(__name__)

# basic.qos prefetch_count is 16 bits: a run holds at most this many messages at once.
MAX_HELD = 65_535
# A run ends early when no message came for this long (another client took some).
IDLE_SECONDS = 5.0
MOVE_BATCH = 500
# Closing what a run opened waits this long at most (the connection may be gone).
RELEASE_SECONDS = 10.0

Progress = Callable[[int, int], None]
"""Called with the number of messages read so far, and the number parked at the start."""


def no_progress(done: int, total: int) -> None:
    """A :data:`Progress` that shows nothing."""


class Copy(NamedTuple):
    """Where a moved message goes: its body and properties, published into ``queue``."""

    body: bytes
    properties: Properties
    queue: str


CopyOf = Callable[[AbstractIncomingMessage], Awaitable[Copy | None]]
"""The copy to move a message to, or None to leave it parked."""


@dataclass
class Tally:
    """What one run did: every count is of messages, ``parked`` the depth at its start."""

    parked: int
    read: int = 0
    matched: int = 0
    moved: list[str] = field(default_factory=list)
    failed: int = 0
    error: PostdateError | None = None

    @property
    def complete(self) -> bool:
        """Whether the run read every message that was parked when it started."""
        return self.read >= self.parked


class ParkedRead:
    """One run on the parked queue ``queue``: its lock, its depth, its messages.

    Use as ``async with ParkedRead(connection, queue) as run:``; leaving the block
    gives back every message read and not acked, then releases the lock.

    Raises (on entry):
        QueueNotFound: ``queue`` does not exist.
        ReadLockBusy: another run on ``queue`` did not end within ``lock_wait`` seconds.
    """

    def __init__(
        self, connection: AbstractConnection, queue: str, *, lock_wait: float = LOCK_WAIT_SECONDS
    ) -> None:
        self.connection = connection
        self.queue = queue
        self.lock_wait = lock_wait
        self.depth = 0
        self._lock: AbstractChannel | None = None
        self._reader: AbstractChannel | None = None

    async def __aenter__(self) -> Self:
        """Take this process's lock, then the broker's, then note the depth."""
        await local_lock(self.queue).acquire()
        try:
            self._lock = await take_lock(self.connection, self.queue, self.lock_wait)
            self._reader = await self.connection.channel()
            self.depth = await self._depth()
        except BaseException:
            await self._release()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Give back what was read and not acked, release the lock."""
        await self._release()

    async def messages(
        self, limit: int | None = None
    ) -> AsyncGenerator[AbstractIncomingMessage, None]:
        """The messages parked when the run started, in order (at most ``limit``)."""
        assert self._reader is not None, "use ParkedRead as an async context manager"
        wanted = self.depth if limit is None else min(limit, self.depth)
        if wanted <= 0:
            return
        await self._reader.set_qos(prefetch_count=min(wanted, MAX_HELD))
        queue = await self._reader.get_queue(self.queue, ensure=False)
        async with queue.iterator(timeout=IDLE_SECONDS) as incoming:
            for _ in range(wanted):
                try:
                    message = await anext(incoming)
                except TimeoutError:
                    log.warning("parked.read.idle", queue=self.queue, waited=IDLE_SECONDS)
                    return
                except StopAsyncIteration:  # the channel closed: the run ends incomplete
                    return
                yield message

    async def _depth(self) -> int:
        """The ready messages, once no earlier run holds any: a run's unacked messages
        go back only after the broker processed its channel's close, and only runs
        consume a parking queue."""
        deadline = asyncio.get_running_loop().time() + self.lock_wait
        while True:
            state = (await queue_states(self.connection, [self.queue]))[self.queue]
            if state is None:
                raise QueueNotFound(f"queue {self.queue!r} does not exist")
            if state.consumers == 0:
                return state.messages
            if asyncio.get_running_loop().time() >= deadline:
                raise ReadLockBusy(
                    f"{self.queue} is still being read ({state.consumers} consumer(s)); "
                    "try again when that run has ended"
                )
            await asyncio.sleep(LOCK_POLL_SECONDS)

    async def _release(self) -> None:
        try:
            async with asyncio.timeout(RELEASE_SECONDS):
                await self._give_back()
        except TimeoutError:
            log.warning("parked.release.timeout", queue=self.queue)
        finally:
            local_lock(self.queue).release()

    async def _give_back(self) -> None:
        if self._reader is not None:
            await close_quietly(self._reader)  # unacked messages go back, in order
            self._reader = None
        if self._lock is not None:
            await release_lock(self._lock, self.queue)
            self._lock = None


async def read_parked(
    connection: AbstractConnection,
    queue: str,
    progress: Progress = no_progress,
) -> tuple[list[AbstractIncomingMessage], int]:
    """Every message parked in ``queue`` (up to :data:`MAX_HELD`), and the depth.

    The messages stay parked: they are given back as soon as they are read.

    Raises:
        QueueNotFound: ``queue`` does not exist.
        ReadLockBusy: another run on ``queue`` did not end in time.
    """
    async with ParkedRead(connection, queue) as run:
        read = []
        async with aclosing(run.messages(limit=MAX_HELD)) as messages:
            async for message in messages:
                read.append(message)
                progress(len(read), run.depth)
        return read, run.depth


async def move_parked(
    connection: AbstractConnection,
    queue: str,
    publisher: Publisher,
    copy_of: CopyOf,
    progress: Progress = no_progress,
) -> Tally:
    """Move the messages of ``queue`` that ``copy_of`` gives a copy for; the rest stay.

    Each copy is confirmed before its original is acked. A message id already moved in
    this run is not moved again. The run stops at the first batch with a failed copy
    (``Tally.error``); what was not moved stays parked.

    Raises:
        QueueNotFound: ``queue`` does not exist.
        ReadLockBusy: another run on ``queue`` did not end in time.
    """
    async with ParkedRead(connection, queue) as run:
        tally = Tally(run.depth)
        batch: list[tuple[AbstractIncomingMessage, Copy]] = []
        seen: set[str] = set()
        async with aclosing(run.messages()) as messages:
            async for message in messages:
                tally.read += 1
                copy = await copy_of(message)
                if copy is not None and _first_time(message, seen):
                    tally.matched += 1
                    batch.append((message, copy))
                if len(batch) >= MOVE_BATCH or tally.read == run.depth:
                    await _move(batch, publisher, tally)
                    batch = []
                    if tally.error is not None:
                        break
                progress(tally.read, run.depth)
        await _move(batch, publisher, tally)
        return tally


def _first_time(message: AbstractIncomingMessage, seen: set[str]) -> bool:
    if message.message_id is None:
        return True
    if message.message_id in seen:
        return False
    seen.add(message.message_id)
    return True


async def _move(
    batch: list[tuple[AbstractIncomingMessage, Copy]], publisher: Publisher, tally: Tally
) -> None:
    if not batch:
        return
    errors = await publisher.republish_each([copy for _, copy in batch])
    for (message, _), error in zip(batch, errors, strict=True):
        if error is None:
            await message.ack()
            tally.moved.append(message.message_id or "")
        else:
            tally.failed += 1
            tally.error = tally.error or error


async def delete_parked(
    connection: AbstractConnection,
    queue: str,
    matches: Callable[[AbstractIncomingMessage], bool],
    progress: Progress = no_progress,
) -> Tally:
    """Delete (ack) the messages of ``queue`` that ``matches``; the rest stay parked.

    Raises:
        QueueNotFound: ``queue`` does not exist.
        ReadLockBusy: another run on ``queue`` did not end in time.
    """
    async with ParkedRead(connection, queue) as run:
        tally = Tally(run.depth)
        async with aclosing(run.messages()) as messages:
            async for message in messages:
                tally.read += 1
                if matches(message):
                    await message.ack()
                    tally.matched += 1
                    tally.moved.append(message.message_id or "")
                progress(tally.read, run.depth)
        return tally
