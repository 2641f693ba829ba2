"""Hard deadlines for many attempts at once, on one timer per duration.

``asyncio.timeout`` arms a timer of its own for every attempt, and each of its calls asks for
the running loop (a ``getpid`` system call on Python 3.11): about 6 % of the CPU of a run of
small responses. The attempts of a run almost all have the same duration (``--timeout``), so
their deadlines come due in the order the attempts start: one FIFO per duration, and one
timer for its oldest entry, serve them all. An attempt that ends early only leaves the FIFO
(the last one to leave takes the timer and the FIFO with it); the timer, when it fires,
cancels what is overdue and is armed again for the oldest left.

Within :meth:`Deadlines.limit`, expiry behaves as ``asyncio.timeout`` does (Python 3.11): the
task is cancelled, and the ``CancelledError`` that results leaves the block as ``TimeoutError``;
a cancellation from elsewhere (^C) stays a ``CancelledError``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from types import TracebackType


class Deadlines:
    """Deadlines of ``seconds`` from now for the running task: ``with deadlines.limit(seconds):``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, _Queue] = {}

    def limit(self, seconds: float) -> Limit:
        """A context manager that ends its block with ``TimeoutError`` after ``seconds``."""
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = _Queue(self, seconds)
        return Limit(queue, asyncio.current_task(self._loop))

    def _drop(self, queue: _Queue) -> None:
        if self._queues.get(queue.seconds) is queue:
            del self._queues[queue.seconds]


class _Queue:
    """The running limits of one duration, oldest (soonest due) first, and their one timer."""

    __slots__ = ("_owner", "_timer", "running", "seconds")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self.seconds = seconds
        self.running: OrderedDict[Limit, None] = OrderedDict()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, limit: Limit) -> float:
        loop = self._owner._loop
        when = loop.time() + self.seconds
        self.running[limit] = None
        if self._timer is None:
            self._timer = loop.call_at(when, self._expire)
        return when

    def remove(self, limit: Limit) -> None:
        running = self.running
        running.pop(limit, None)
        if not running:
            # Nothing left to time: the queue goes now, its timer with it (a list where each
            # request has a timeout of its own would otherwise keep a queue per request alive
            # until its timer fired). With others still running the timer stays armed, and
            # when it fires it finds the next due.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._owner._drop(self)

    def _expire(self) -> None:
        self._timer = None
        loop = self._owner._loop
        # Due within a millisecond counts as due: uvloop's timers fire on whole milliseconds,
        # up to half of one early, and re-arming for the rest would spin until the clock got there.
        now = loop.time() + 0.001
        running = self.running
        while running:
            limit = next(iter(running))
            if limit.when > now:
                self._timer = loop.call_at(limit.when, self._expire)
                return
            del running[limit]
            limit.expire()
        self._owner._drop(self)


class Limit:
    """One attempt's deadline (see :meth:`Deadlines.limit`)."""

    __slots__ = ("_cancelling", "_queue", "_task", "expired", "when")

    def __init__(self, queue: _Queue, task: asyncio.Task[object] | None) -> None:
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        self._queue = queue
        self._task = task
        self.expired = False
        self.when = 0.0
        self._cancelling = 0

    def __enter__(self) -> Limit:
        self._cancelling = self._task.cancelling()
        self.when = self._queue.add(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self.expired:
            self._queue.remove(self)
            return
        # Ours was the cancellation, and nobody else asked for one: the block timed out.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()
