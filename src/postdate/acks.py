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
    # Settled above a tag still outstanding, until the floor passes them: as many as a
    # worker settles while its oldest delivery is held or handled.
    settled_ahead: set[int] = field(default_factory=set)

    def plan(self, tags: Iterable[int]) -> list[AckFrame]:
        """The frames that ack ``tags`` (each asked once), in the order to send them.

        The run of tags above ``floor`` that are all asked now or already settled goes
        as one frame (multiple when it acks more than one); each other tag goes alone.
        """
        asked = set(tags)
        frames: list[AckFrame] = []
        run = self._run(asked)
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
        elif tag > self.floor:
            self.settled_ahead.add(tag)

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
    """The acks of one aiormq channel: :meth:`ack` returns once its frame is written."""

    def __init__(self, channel: AbstractChannel) -> None:
        # Weak: Acks keys these by their channel, which a strong reference would keep alive.
        self._channel = weakref.ref(channel)
        self._ledger = AckLedger()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def ack(self, tag: int) -> None:
        """Ack delivery ``tag``, with whatever else is acked in the same loop turn.

        Raises:
            aiormq.exceptions.ChannelInvalidStateError: the channel closed first (the
                broker delivers the message again), or another error of the write.
        """
        future = asyncio.get_running_loop().create_future()
        self._waiting[tag] = future
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await future

    def given_back(self, tag: int) -> None:
        """``tag`` was nacked or rejected: a later multiple ack may pass over it."""
        self._ledger.settled(tag)

    def is_settled(self, tag: int) -> bool:
        """Whether ``tag`` was acked (its frame planned) or given back."""
        return self._ledger.is_settled(tag)

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                await self._send(batch)
        except BaseException as error:  # cancelled: nobody may wait forever
            _fail(self._waiting.values(), error)
            raise
        finally:
            self._flusher = None

    async def _send(self, batch: dict[int, asyncio.Future[None]]) -> None:
        try:
            for frame in self._ledger.plan(batch):
                channel = self._channel()
                if channel is None:
                    raise ChannelInvalidStateError("the channel of these deliveries is gone")
                await channel.basic_ack(frame.tag, multiple=frame.multiple)
                for tag in frame.covers:
                    future = batch.pop(tag)
                    if not future.done():
                        future.set_result(None)
        except BaseException as error:
            _fail(batch.values(), error)
            if not isinstance(error, Exception):
                raise


def _fail(futures: Iterable[asyncio.Future[None]], error: BaseException) -> None:
    """Hand ``error`` to every waiter still waiting (cancel them, for a cancellation)."""
    for future in futures:
        if future.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)


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
