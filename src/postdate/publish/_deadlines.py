"""Deadlines of confirm windows, watched by one timer instead of a timer per window.

:class:`~postdate.publish._confirm.ConfirmedChannel` gives each window of publishes one
deadline (the publish timeout); :class:`Deadlines` cancels a window's task when its
deadline passes and tells the window whether a cancellation it sees was that one.
"""

from __future__ import annotations

import asyncio


class Deadline:
    """One window's deadline (see :class:`Deadlines`)."""

    __slots__ = ("at", "cancelling", "expired", "task")

    def __init__(self, at: float, task: asyncio.Task[object]) -> None:
        self.at = at
        self.task = task
        self.cancelling = task.cancelling()
        self.expired = False


class Deadlines:
    """The deadlines of the windows in flight, watched by one timer.

    For each window what ``asyncio.timeout`` does (at its deadline its task is cancelled,
    and that cancellation, and only that one, becomes a timeout), without arming and
    cancelling a timer per window, which cost a send about as much as building its
    message: the one timer waits for the earliest deadline, and is armed again when it
    fires (about once per publish timeout while windows come and go).
    """

    def __init__(self) -> None:
        self._running: set[Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, timeout: float) -> Deadline:
        """Watch the current task until ``timeout`` seconds from now.

        Raises:
            RuntimeError: not called from a task.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a publish deadline must be started in a task")
        deadline = Deadline(loop.time() + timeout, task)
        self._running.add(deadline)
        if self._timer is None or deadline.at < self._timer.when():
            self._arm(loop, deadline.at)
        return deadline

    def stop(self, deadline: Deadline, error: BaseException | None) -> bool:
        """Stop watching; whether ``error`` is the cancellation ``deadline`` caused, to be
        taken as a timeout (what ``asyncio.timeout`` turns into a TimeoutError)."""
        self._running.discard(deadline)
        if not deadline.expired:
            return False
        return (
            deadline.task.uncancel() <= deadline.cancelling
            and type(error) is asyncio.CancelledError
        )

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._expire, loop, at)

    def _expire(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        """Cancel the tasks of the windows due by ``at`` (the timer's time); wait for the
        next deadline."""
        self._timer = None
        for deadline in [deadline for deadline in self._running if deadline.at <= at]:
            self._running.discard(deadline)
            deadline.expired = True
            deadline.task.cancel()
        if self._running:
            self._arm(loop, min(deadline.at for deadline in self._running))
