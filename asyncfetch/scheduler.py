"""The queue stage: which request a free worker starts next.

Requests wait in one queue per host (scheme, host, port). A worker takes the next request
from the next host that may start one, round-robin, so a saturated or paused host never
holds a worker: ``--per-host`` caps a host's requests in flight, a host that answered 429
or 503 with ``Retry-After`` is paused as a whole until then, ``--rate`` spaces request
starts evenly (never more than R in any second, no bursts). Retries come back to the front
of their host's queue after their backoff, without holding a worker while they wait.

Hosts with nothing running come first: a host that already has a request in flight starts
another (on a connection of its own) only when no other host is ready, and a host whose
last running request just ended comes next of all, so that its next request takes the
connection that request left idle. On a list of many hosts each host's requests follow one
another over one kept connection instead of each paying a new TCP and TLS handshake, and
few connections wait idle; a list of one host still runs on every worker.

``--per-host-rate R`` spaces the starts on each host 1/R apart (retries included): a host
waiting for its next slot is simply not ready, a timer makes it ready again, and other hosts
go on meanwhile. A host is remembered until its next slot has come, so a request arriving
for it after a quiet moment still waits its turn. With ``--rate`` too, a start takes both its
host's slot and a global one, and the host's next slot counts from the moment it really started.

``--adaptive`` hands each host's answers to :class:`asyncfetch.politeness.Adaptive` (AIMD:
the rule is there): its window replaces ``--per-host`` as the host's limit and its spacing
is added to the host's pace; it never goes beyond ``--per-host``, ``--per-host-rate`` or ``-c``.

``--max-host-errors N``: after N connect or timeout failures in a row on one host
(:class:`asyncfetch.politeness.Breaker`) the host is *down* for the rest of the run: its
queued requests and retries are handed out at once, ignoring its limits and pace, with
:attr:`Job.down` set, so the engine ends each with an error record without sending it.

The scheduler holds at most ``capacity`` requests (waiting, running or backing off): the
input is read no faster than requests finish, which keeps memory flat on endless input.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from asyncfetch.errors import ErrorKind
from asyncfetch.http import Origin, origin_of
from asyncfetch.politeness import Adaptive, Breaker
from asyncfetch.spec import RequestSpec


def host_key(spec: RequestSpec) -> Origin:
    """The host a request counts against: scheme, lower-case host and port."""
    return origin_of(spec.target)


class _Host:
    __slots__ = (
        "active",
        "adaptive",
        "backing_off",
        "breaker",
        "deferred",
        "down",
        "in_busy",
        "in_idle",
        "key",
        "last_start",
        "paused_until",
        "pending",
        "slot_at",
        "slot_timer",
    )

    def __init__(self, key: Origin) -> None:
        self.key = key
        self.active = 0  # requests running
        self.deferred = 0  # retries waiting out their backoff
        self.pending: deque[Job] = deque()
        self.paused_until = 0.0
        # In the scheduler's queue of ready hosts with nothing running / with requests running.
        self.in_idle = False
        self.in_busy = False
        self.slot_at = 0.0  # --per-host-rate / --adaptive: no start on this host before then
        self.slot_timer = False  # a timer will make the host ready at its slot
        self.last_start = float("-inf")
        self.adaptive: Adaptive | None = None
        self.breaker: Breaker | None = None
        self.down: str | None = None  # why the breaker gave up on this host
        self.backing_off: set[Job] = set()  # retries waiting out their backoff, to release when down


class Job:
    """A request on its way through the scheduler, with the attempts made so far."""

    __slots__ = ("attempts", "host", "spec", "started", "stored", "timer")

    def __init__(self, spec: RequestSpec, host: _Host) -> None:
        self.spec = spec
        self.host = host
        self.attempts = 0
        self.started = 0.0  # the scheduler's clock when its last attempt was handed out
        self.timer: asyncio.TimerHandle | None = None  # its backoff, while it waits one
        # What the engine looked up for it before it was sent (--state), opaque here.
        self.stored: object = None

    @property
    def down(self) -> str | None:
        """Why its host is given up (``--max-host-errors``), or None: then it is not to be sent."""
        return self.host.down


class Scheduler:
    """Per-host queues, per-host limits, host pauses, rate pacing and delayed retries."""

    def __init__(
        self,
        *,
        capacity: int,
        per_host: int = 0,
        rate: float | None = None,
        per_host_rate: float | None = None,
        adaptive: bool = False,
        concurrency: int = 0,
        max_host_errors: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = capacity
        self._per_host = per_host
        self._interval = 1.0 / rate if rate else 0.0
        self._host_interval = 1.0 / per_host_rate if per_host_rate else 0.0
        self._adaptive = adaptive
        # The most an adaptive window may reach: the user's per-host limit, else every worker.
        self._ceiling = per_host or concurrency or capacity
        self._max_host_errors = max_host_errors
        # What was learnt about hosts that outlives their queue: the hosts given up, and the
        # adaptive state of hosts still backed off (dropped once they are back at rest).
        self._down: dict[Origin, str] = {}
        self._learnt: dict[Origin, Adaptive] = {}
        self._clock = clock
        self._next_start = 0.0
        self._hosts: dict[Origin, _Host] = {}
        # Ready hosts: those with nothing running are served first (see the module docstring).
        self._ready_idle: deque[_Host] = deque()
        self._ready_busy: deque[_Host] = deque()
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

    def queued(self, key: Origin) -> int:
        """Requests for the host ``key`` waiting to start (queued, or backing off before a retry).

        Read-only, for the connection pool: an idle connection to a host with requests
        coming is worth keeping, one to a host with none is the first to close.
        """
        host = self._hosts.get(key)
        return 0 if host is None else len(host.pending) + host.deferred

    # -- the producer's side -------------------------------------------------------------------
    async def put(self, spec: RequestSpec, stored: object = None) -> None:
        """Queue a request; waits while the scheduler is full.

        ``stored`` travels with the request to the worker (:attr:`Job.stored`); a callable is
        called once the request is taken in, and its result travels instead.
        """
        while self._held >= self._capacity and not self._stopped:
            await self._park(self._putters)
        if self._stopped:
            return
        key = host_key(spec)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = self._new_host(key)
        job = Job(spec, host)
        job.stored = stored() if callable(stored) else stored
        host.pending.append(job)
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
            while host := self._next_ready():
                if host.down is not None:
                    # Given up: hand its requests out at once, to be ended without a word sent.
                    job = host.pending.popleft()
                    host.active += 1
                    self._make_ready(host)
                    return job
                now = self._clock()
                if host.paused_until > now:
                    continue  # paused after it was queued; its timer queues it again
                limit = self._limit_of(host)
                if (limit and host.active >= limit) or host.slot_at > now:
                    # Its window shrank or its pace slowed (--adaptive) after it was queued.
                    self._make_ready(host)
                    continue
                job = host.pending.popleft()
                host.active += 1
                interval = self._interval_of(host)
                if interval:
                    # Claim the host's slot now, so no other worker takes it meanwhile.
                    host.slot_at = max(host.slot_at, now + interval)
                self._make_ready(host)
                if self._interval:
                    await self._pace()
                    if self._stopped or host.paused_until > self._clock() or host.down is not None:
                        # Paused (or stopped, or given up) while this one waited for its rate
                        # slot: it waits too.
                        host.active -= 1
                        self._requeue(job)
                        continue
                    if interval:
                        # The host's next slot counts from this real start, after the global wait.
                        host.slot_at = max(host.slot_at, self._clock() + interval)
                job.attempts += 1
                job.started = host.last_start = self._clock()
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
        if delay > 0 and host.down is None:
            host.deferred += 1
            host.backing_off.add(job)
            job.timer = self._later(delay, self._end_backoff, job)
        else:
            self._requeue(job)

    def report(
        self,
        job: Job,
        *,
        status: int | None,
        kind: ErrorKind | None,
        message: str = "",
        elapsed: float = 0.0,
        size: int = 0,
    ) -> None:
        """What the attempt just handed out for ``job`` met: feeds the breaker and ``--adaptive``."""
        host = job.host
        if host.down is not None:
            return
        breaker = host.breaker
        if breaker is not None and breaker.observe(status=status, kind=kind, message=message):
            self._give_up(host, breaker)
            return
        adaptive = host.adaptive
        if adaptive is not None:
            now = self._clock()
            backed_off = adaptive.observe(
                started=job.started, now=now, status=status, kind=kind, elapsed=elapsed, size=size
            )
            if backed_off:
                host.slot_at = max(host.slot_at, host.last_start + adaptive.interval)
            if adaptive.at_rest:
                self._learnt.pop(host.key, None)
            else:
                self._learnt[host.key] = adaptive
            self._make_ready(host)

    # -- internals -----------------------------------------------------------------------------
    def _release(self, job: Job) -> None:
        host = job.host
        host.active -= 1
        # Its connection has just gone idle: the host's next request goes before any other.
        self._make_ready(host, first=True)

    def _requeue(self, job: Job) -> None:
        job.host.pending.appendleft(job)
        self._make_ready(job.host)

    def _end_backoff(self, job: Job) -> None:
        job.timer = None
        job.host.deferred -= 1
        job.host.backing_off.discard(job)
        self._requeue(job)

    def _new_host(self, key: Origin) -> _Host:
        host = _Host(key)
        host.down = self._down.get(key)
        if self._max_host_errors:
            host.breaker = Breaker(self._max_host_errors)
        if self._adaptive:
            learnt = self._learnt.get(key)
            host.adaptive = learnt if learnt is not None else Adaptive(self._ceiling, self._host_interval)
        return host

    def _give_up(self, host: _Host, breaker: Breaker) -> None:
        host.down = (
            f"not sent: {breaker.failures} connect or timeout failures in a row on this host"
            f" (--max-host-errors {breaker.limit}); the last: {breaker.last}"
        )
        self._down[host.key] = host.down
        self._learnt.pop(host.key, None)
        # Its retries waiting out a backoff come back now, to be ended at once too.
        for job in list(host.backing_off):
            if job.timer is not None:
                job.timer.cancel()
                self._timers.discard(job.timer)
            self._end_backoff(job)
        self._make_ready(host)

    def _limit_of(self, host: _Host) -> int:
        if host.adaptive is not None:
            return host.adaptive.limit
        return self._per_host

    def _interval_of(self, host: _Host) -> float:
        if host.adaptive is not None:
            return host.adaptive.interval
        return self._host_interval

    def _slot_due(self, host: _Host, at: float) -> None:
        # Like _unpause: the timer is the authority (it may fire a hair before the clock says `at`).
        host.slot_timer = False
        if host.slot_at <= at:
            host.slot_at = 0.0
        self._make_ready(host)
        self._forget_if_idle(host)

    def _unpause(self, host: _Host, until: float) -> None:
        # The timer is the authority: loop timers may fire a hair before the clock says `until`
        # (uvloop counts whole milliseconds), and a host left paused would never be served again.
        if host.paused_until <= until:
            host.paused_until = 0.0
        self._make_ready(host)
        self._forget_if_idle(host)

    def _next_ready(self) -> _Host | None:
        """The next ready host: one with nothing running if there is one, else a busy one."""
        # A host may be in both queues (it went idle while queued as busy): an entry whose
        # requests were all taken by the other one is passed over.
        idle, busy = self._ready_idle, self._ready_busy
        while idle:
            host = idle.popleft()
            host.in_idle = False
            if not host.pending:
                continue
            if host.active == 0 or host.down is not None:
                return host
            self._make_ready(host)  # it has started a request meanwhile (from the busy queue)
        while busy:
            host = busy.popleft()
            host.in_busy = False
            if host.pending:
                return host
        return None

    def _make_ready(self, host: _Host, *, first: bool = False) -> None:
        if not host.pending or self._stopped:
            return
        idle = host.active == 0 or host.down is not None
        if host.in_idle or (host.in_busy and not idle):
            return
        if host.down is None:
            limit = self._limit_of(host)
            if limit and host.active >= limit:
                return
            now = self._clock()
            if host.paused_until > now:
                return
            if host.slot_at > now:
                self._wake_at_slot(host, now)
                return
        if idle:
            host.in_idle = True
            if first:
                self._ready_idle.appendleft(host)
            else:
                self._ready_idle.append(host)
        else:
            host.in_busy = True
            self._ready_busy.append(host)
        if self._getters:
            self._wake_one(self._getters)

    def _forget_if_idle(self, host: _Host) -> None:
        if host.pending or host.active or host.deferred:
            return
        now = self._clock()
        if host.paused_until > now:
            return
        if host.slot_at > now:
            self._wake_at_slot(host, now)  # forgotten once its slot has come
            return
        if self._hosts.get(host.key) is host:
            del self._hosts[host.key]

    def _wake_at_slot(self, host: _Host, now: float) -> None:
        if not host.slot_timer:
            host.slot_timer = True
            self._later(host.slot_at - now, self._slot_due, host, host.slot_at)

    async def _pace(self) -> None:
        now = self._clock()
        start = max(now, self._next_start)
        self._next_start = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)

    def _later(self, delay: float, callback: Callable[..., None], *args: object) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            callback(*args)

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)
        return timer

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
