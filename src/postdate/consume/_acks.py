"""Acks of one channel, coalesced: one ``basic.ack(multiple=True)`` for a run of
consecutive deliveries settled together, instead of a frame (and, on the broker, a
settle) each.

Delivery tags on a channel are the consecutive integers from 1. :class:`AckLedger` (pure)
keeps ``floor``: every tag up to it is settled, through it. A multiple ack is planned
only over tags each of which is either being acked now or already settled, so it can
never cover a delivery still held or handled, nor one a ``nack`` gave back; everything
else is acked alone. :class:`ChannelAcks` sends the plans of one channel, one flush at a
time, so that frames leave in the order they were planned.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelInvalidStateError

# Tags settled above one still outstanding (held or in a handler) wait in a set until
# the floor passes them. Past this many, the ledger stops coalescing for the channel's
# life and forgets them: every ack goes alone, and is_settled knows only the floor.
SETTLED_AHEAD_LIMIT = 100_000


@dataclass(frozen=True)
class AckFrame:
    """One ``basic.ack``: ``tag``, with ``multiple`` set when it covers ``covers`` (the
    tags acked by it, ``tag`` among them) and more than one of them."""

    tag: int
    multiple: bool
    covers: tuple[int, ...]


@dataclass
class AckLedger:
    """Which acks to send for the tags asking now, given what was settled before."""

    floor: int = 0
    settled_ahead: set[int] = field(default_factory=set)
    singles_only: bool = False

    def plan(self, tags: Iterable[int]) -> list[AckFrame]:
        """The frames that ack ``tags`` (each asked once), in the order to send them.

        The run of tags above ``floor`` that are all asked now or already settled goes
        as one frame (multiple when it acks more than one); each other tag goes alone.
        """
        asked = {tag for tag in tags if not self.is_settled(tag)}
        frames: list[AckFrame] = []
        run = [] if self.singles_only else self._run(asked)
        if run:
            frames.append(AckFrame(run[-1], len(run) > 1, tuple(run)))
            asked.difference_update(run)
        for tag in sorted(asked):
            frames.append(AckFrame(tag, False, (tag,)))
            self.settled(tag)
        return frames

    def settled(self, tag: int) -> None:
        """Record ``tag`` as settled some other way (given back), or acked alone."""
        if tag == self.floor + 1:
            self.floor = tag
            self._advance()
        elif tag > self.floor and not self.singles_only:
            self.settled_ahead.add(tag)
            if len(self.settled_ahead) > SETTLED_AHEAD_LIMIT:
                self.singles_only = True
                self.settled_ahead.clear()

    def is_settled(self, tag: int) -> bool:
        """Whether ``tag`` was acked or given back (through this ledger)."""
        return tag <= self.floor or tag in self.settled_ahead

    def _run(self, asked: set[int]) -> list[int]:
        """Walk the floor up through tags asked or settled; the asked ones it passed."""
        run: list[int] = []
        tag = self.floor + 1
        while tag in asked or tag in self.settled_ahead:
            if tag in asked:
                run.append(tag)
            else:
                self.settled_ahead.discard(tag)
            tag += 1
        self.floor = tag - 1
        return run

    def _advance(self) -> None:
        while self.floor + 1 in self.settled_ahead:
            self.floor += 1
            self.settled_ahead.discard(self.floor)


class ChannelAcks:
    """The acks of one aiormq channel: :meth:`ack` returns once its frame is written.

    One flush at a time sends what was asked, as a task of the channel (so that the
    channel's close ends it). A flush that fails or is cut off leaves the ledger ahead of
    what was sent: from then on every ack of this channel fails, as they would on the
    closed channel that is nearly always the cause.
    """

    def __init__(self, channel: AbstractChannel) -> None:
        # Weak: Acks keys these by their channel, which a strong reference would keep alive.
        self._channel = weakref.ref(channel)
        self._ledger = AckLedger()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._flushing = False
        self._stopped: str | None = None  # why acks of this channel stopped

    async def ack(self, tag: int) -> None:
        """Ack delivery ``tag``, with whatever else is acked in the same loop turn. An ack
        of a tag already acked returns once that ack is written. A caller cancelled before
        its ack was planned leaves the delivery unacked (the broker delivers it again).

        Raises:
            aiormq.exceptions.ChannelInvalidStateError: the channel closed first (the
                broker delivers the message again), or an earlier flush failed.
            Another error of the write (the channel's connection is gone).
        """
        if self._stopped is not None:
            raise ChannelInvalidStateError(self._stopped)
        asked = self._waiting.get(tag)
        if asked is not None:
            await asyncio.shield(asked)
            return
        if self._ledger.is_settled(tag):
            return
        future = self._queue(tag)
        try:
            await future
        except asyncio.CancelledError:
            if self._waiting.get(tag) is future:
                del self._waiting[tag]
            raise

    def given_back(self, tag: int) -> None:
        """``tag`` was nacked or rejected: a later multiple ack may pass over it."""
        self._ledger.settled(tag)

    def is_settled(self, tag: int) -> bool:
        """Whether ``tag`` was acked (its frame planned) or given back."""
        return self._ledger.is_settled(tag)

    def _queue(self, tag: int) -> asyncio.Future[None]:
        """Queue ``tag`` for the flush (starting one if none runs); its waiter's future."""
        channel = self._live_channel()
        future = asyncio.get_running_loop().create_future()
        self._waiting[tag] = future
        if not self._flushing:
            self._flushing = True
            channel.create_task(self._flush())
        return future

    def _live_channel(self) -> AbstractChannel:
        channel = self._channel()
        if channel is None or channel.is_closed:
            raise ChannelInvalidStateError("the channel of this delivery is closed")
        return channel

    async def _flush(self) -> None:
        batch: dict[int, asyncio.Future[None]] = {}
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                await self._send(self._ledger.plan(batch))
                for asked in batch.values():  # each acked now, or asked again after its ack
                    _resolve(asked)
                batch = {}
        except BaseException as error:
            self._stopped = f"acks of this channel stopped: {error!r}"
            failure = error if isinstance(error, Exception) else None
            _fail([*batch.values(), *self._waiting.values()], failure or self._stopped)
            self._waiting.clear()
            if failure is None:
                raise
        finally:
            self._flushing = False

    async def _send(self, frames: list[AckFrame]) -> None:
        """Queue ``frames`` in order and wait until the last is written: the connection
        writes its queue in order, so every frame before it is written too. Waiting for
        each frame in turn took a few loop turns per frame: with hundreds of deliveries
        settled out of order (held ones come due in their own order), the last ack of a
        batch left 100 ms or more after its handler returned, and a connection cut in
        that window made the broker deliver those commands again."""
        channel = self._live_channel()
        for frame in frames[:-1]:
            await channel.basic_ack(frame.tag, multiple=frame.multiple, wait=False)
        if frames:
            await channel.basic_ack(frames[-1].tag, multiple=frames[-1].multiple)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(futures: Iterable[asyncio.Future[None]], error: Exception | str) -> None:
    """Hand ``error`` (a message: ChannelInvalidStateError) to every waiter still waiting."""
    for future in futures:
        if not future.done():
            future.set_exception(
                ChannelInvalidStateError(error) if isinstance(error, str) else error
            )


class Acks:
    """The :class:`ChannelAcks` of every channel deliveries come on (forgotten with it)."""

    def __init__(self) -> None:
        self._channels: weakref.WeakKeyDictionary[AbstractChannel, ChannelAcks] = (
            weakref.WeakKeyDictionary()
        )

    def __len__(self) -> int:
        """How many channels' acks are kept (a channel that is gone is forgotten)."""
        return len(self._channels)

    def of(self, channel: AbstractChannel) -> ChannelAcks:
        """The acks of ``channel``."""
        acks = self._channels.get(channel)
        if acks is None:
            acks = self._channels[channel] = ChannelAcks(channel)
        return acks
