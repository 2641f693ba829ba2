"""The queue stage: which request a free worker starts next.

Requests wait in one queue per host (scheme, host, port). A worker takes the next request
from the next host that may start one, round-robin, so a saturated or paused host never
holds a worker: ``--per-host`` caps a host's requests in flight, a host that answered 429
or 503 with ``Retry-After`` is paused as a whole until then, ``--rate`` spaces request
starts evenly (never more than R in any second, no bursts). Retries come back to the front
of their host's queue after their backoff, without holding a worker while they wait.

The scheduler holds at most ``capacity`` requests (waiting, running or backing off): the
input is read no faster than requests finish, which keeps memory flat on endless input.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from asyncfetch.http import Origin, origin_of
from asyncfetch.spec import RequestSpec


def host_key(spec: RequestSpec) -> Origin:
    """The host a request counts against: scheme, lower-case host and port."""
    return origin_of(spec.target)


class _Host:
    __slots__ = ("active", "deferred", "key", "paused_until", "pending", "ready")

    def __init__(self, key: Origin) -> None:
        self.key = key
        self.active = 0  # requests running
        self.deferred = 0  # retries waiting out their backoff
        self.pending: deque[Job] = deque()
        self.paused_until = 0.0
        self.ready = False  # in the scheduler's ready queue


class Job:
    """A request on its way through the scheduler, with the attempts made so far."""

    __slots__ = ("attempts", "host", "spec")

    def __init__(self, spec: RequestSpec, host: _Host) -> None:
        self.spec = spec
        self.host = host
        self.attempts = 0


class Scheduler:
    """Per-host queues, per-host limits, host pauses, rate pacing and delayed retries."""

    def __init__(
        self,
        *,
        capacity: int,
        per_host: int = 0,
        rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = capacity
        self._per_host = per_host
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._next_start = 0.0
        self._hosts: dict[Origin, _Host] = {}
        self._ready: deque[_Host] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._timers: set[asyncio.TimerHandle] = set()
        self._held = 0
        self._closed = False
        self._stopped = False

    @property
    def held(self) -> int:
        """Requests taken in and not yet finished (waiting, running, or backing off)."""
        return self._held

    # -- the producer's side -------------------------------------------------------------------
    async def put(self, spec: RequestSpec) -> None:
        """Queue a request; waits while the scheduler is full."""
        while self._held >= self._capacity and not self._stopped:
            await self._park(self._putters)
        if self._stopped:
            return
        key = host_key(spec)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(key)
        host.pending.append(Job(spec, host))
        self._held += 1
        self._make_ready(host)

    def close(self) -> None:
        """No more requests will be put: workers end once the held ones are finished."""
        self._closed = True
        if self._held == 0:
            self._wake_all(self._getters)

    def stop(self) -> None:
        """Hand out nothing more (an interrupt); waiting producers and workers return."""
        self._stopped = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._wake_all(self._getters)
        self._wake_all(self._putters)

    # -- the workers' side ---------------------------------------------------------------------
    async def get(self) -> Job | None:
        """The next request to start, or None when there will be no more."""
        while True:
            if self._stopped:
                return None
            ready = self._ready
            while ready:
                host = ready.popleft()
                host.ready = False
                if host.paused_until > self._clock():
                    continue  # paused after it was queued; its timer queues it again
                job = host.pending.popleft()
                host.active += 1
                self._make_ready(host)
                if self._interval:
                    await self._pace()
                    if self._stopped or host.paused_until > self._clock():
                        # Paused (or stopped) while this one waited for its rate slot: it waits too.
                        host.active -= 1
                        self._requeue(job)
                        continue
                job.attempts += 1
                return job
            if self._closed and self._held == 0:
                return None
            await self._park(self._getters)

    def finish(self, job: Job) -> None:
        """The request has its record: its host slot and its place in the scheduler are free."""
        self._release(job)
        self._held -= 1
        self._forget_if_idle(job.host)
        if self._putters:
            self._wake_one(self._putters)
        if self._closed and self._held == 0:
            self._wake_all(self._getters)

    def pause(self, host: _Host, seconds: float) -> None:
        """Start nothing more on ``host`` for ``seconds`` (it answered 429/503 with Retry-After)."""
        until = self._clock() + seconds
        if seconds > 0 and until > host.paused_until:
            host.paused_until = until
            self._later(seconds, self._unpause, host, until)

    def retry(self, job: Job, delay: float) -> None:
        """Start the request again after ``delay`` seconds, at the front of its host's queue."""
        self._release(job)
        host = job.host
        if delay > 0:
            host.deferred += 1
            self._later(delay, self._end_backoff, job)
        else:
            self._requeue(job)

    # -- internals -----------------------------------------------------------------------------
    def _release(self, job: Job) -> None:
        host = job.host
        host.active -= 1
        self._make_ready(host)

    def _requeue(self, job: Job) -> None:
        job.host.pending.appendleft(job)
        self._make_ready(job.host)

    def _end_backoff(self, job: Job) -> None:
        job.host.deferred -= 1
        self._requeue(job)

    def _unpause(self, host: _Host, until: float) -> None:
        # The timer is the authority: loop timers may fire a hair before the clock says `until`
        # (uvloop counts whole milliseconds), and a host left paused would never be served again.
        if host.paused_until <= until:
            host.paused_until = 0.0
        self._make_ready(host)
        self._forget_if_idle(host)

    def _make_ready(self, host: _Host) -> None:
        if (
            host.ready
            or not host.pending
            or (self._per_host and host.active >= self._per_host)
            or host.paused_until > self._clock()
            or self._stopped
        ):
            return
        host.ready = True
        self._ready.append(host)
        if self._getters:
            self._wake_one(self._getters)

    def _forget_if_idle(self, host: _Host) -> None:
        if not (host.pending or host.active or host.deferred) and host.paused_until <= self._clock():
            self._hosts.pop(host.key, None)

    async def _pace(self) -> None:
        now = self._clock()
        start = max(now, self._next_start)
        self._next_start = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)

    def _later(self, delay: float, callback: Callable[..., None], *args: object) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            callback(*args)

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    async def _park(self, queue: deque[asyncio.Future[None]]) -> None:
        future = asyncio.get_running_loop().create_future()
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future in queue:
                queue.remove(future)
            raise

    @staticmethod
    def _wake_one(queue: deque[asyncio.Future[None]]) -> None:
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                return

    @staticmethod
    def _wake_all(queue: deque[asyncio.Future[None]]) -> None:
        while queue:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
