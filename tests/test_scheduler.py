"""The scheduler: per-host queues, round-robin, per-host limits, host pauses, rate pacing, retries, capacity.

Most rules are checked by calling :class:`Scheduler` directly (a fake clock where no timer is
involved, short real delays where one is); a few through the engine against local servers,
where only the server's own record of request starts shows what the scheduler did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

import asyncfetch
from asyncfetch.engine import LOOKAHEAD
from asyncfetch.errors import ErrorKind
from asyncfetch.options import FetchOptions
from asyncfetch.scheduler import Job, Scheduler, host_key
from asyncfetch.spec import RequestSpec, SpecBuilder
from tests.conftest import collect
from tests.server import TestServer

pytestmark = pytest.mark.anyio

T = TypeVar("T")

A = "http://a.example"
B = "http://b.example"
C = "http://c.example"

# How much earlier than asked a real sleep or timer may end: uvloop's timers have 1 ms
# granularity, and a stamp taken a moment after the wake-up can round either way.
TIMER_SLACK = 0.005

_builder = SpecBuilder(FetchOptions())


def spec(url: str, index: int = 0) -> RequestSpec:
    """A request spec for ``url`` as the engine would build it."""
    return _builder.from_line(url, index)


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """The result of ``awaitable``, which must come within ``seconds``: else it is cancelled and
    :class:`TimeoutError` raised. "Must not return yet" is ``pytest.raises(TimeoutError)``; a None
    after this is a None the awaited call returned, never a timeout.
    """
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise TimeoutError(f"no result within {seconds} s") from None


async def got(scheduler: Scheduler) -> Job:
    """The next job, which the test expects to be available at once."""
    job = await within(scheduler.get(), 1.0)
    assert job is not None, "get() should have returned a job at once"
    return job


async def put_all(scheduler: Scheduler, urls: list[str]) -> None:
    for index, url in enumerate(urls):
        await scheduler.put(spec(url, index))


def path_of(job: Job) -> str:
    return job.spec.target.raw_path.decode()


# -- host identity ---------------------------------------------------------------------------------
def test_a_host_is_its_scheme_lower_case_name_and_port() -> None:
    """Requests count against (scheme, lower-case host, port), with the scheme's default port filled in."""
    assert host_key(spec("http://Example.COM/x")) == ("http", "example.com", 80)
    assert host_key(spec("http://example.com:80/y")) == host_key(spec("http://example.com/z"))
    assert host_key(spec("https://example.com/")) == ("https", "example.com", 443)
    assert host_key(spec("http://example.com:8080/")) != host_key(spec("http://example.com/"))
    assert host_key(spec("https://example.com/")) != host_key(spec("http://example.com/"))


# -- what the connection pool may read ------------------------------------------------------------
async def test_queued_counts_a_hosts_requests_waiting_or_backing_off() -> None:
    """queued(host) is its requests not yet started plus retries waiting out a backoff; running ones do not count."""
    scheduler = Scheduler(capacity=100, clock=FakeClock())
    await put_all(scheduler, [f"{A}/0", f"{A}/1", f"{A}/2", f"{B}/0"])
    a, b = host_key(spec(A)), host_key(spec(B))
    assert (scheduler.queued(a), scheduler.queued(b), scheduler.queued(host_key(spec(C)))) == (3, 1, 0)
    first = await got(scheduler)
    assert first.spec.target.host == "a.example"
    assert scheduler.queued(a) == 2
    scheduler.retry(first, 30.0)
    assert scheduler.queued(a) == 3
    second = await got(scheduler)  # a's next: a has nothing running again
    assert scheduler.queued(a) == 2
    third = await got(scheduler)  # b's
    scheduler.finish(third)
    assert (scheduler.queued(a), scheduler.queued(b)) == (2, 0)
    scheduler.finish(second)
    scheduler.stop()


# -- round-robin and per-host limits ---------------------------------------------------------------
async def test_workers_take_requests_round_robin_over_ready_hosts() -> None:
    """With several hosts waiting, successive starts cycle through the hosts instead of draining one first."""
    scheduler = Scheduler(capacity=100, clock=FakeClock())
    await put_all(scheduler, [f"{A}/{i}" for i in range(3)] + [f"{B}/{i}" for i in range(3)] + [f"{C}/0"])
    hosts = [(await got(scheduler)).spec.target.host[0] for _ in range(7)]
    assert hosts == ["a", "b", "c", "a", "b", "a", "b"]


async def test_a_host_with_nothing_running_starts_before_a_second_request_to_a_busy_host() -> None:
    """A host already running a request waits while another host with nothing running is ready."""
    scheduler = Scheduler(capacity=100, clock=FakeClock())
    await put_all(scheduler, [f"{A}/0", f"{A}/1"])
    assert path_of(await got(scheduler)) == "/0"  # a is busy now, its /1 ready
    await scheduler.put(spec(f"{B}/0"))
    assert [(await got(scheduler)).spec.target.host[0] for _ in range(2)] == ["b", "a"]


async def test_a_host_whose_request_just_ended_goes_next() -> None:
    """When a host's last running request ends, its next one starts before other hosts (on its idle connection)."""
    scheduler = Scheduler(capacity=100, clock=FakeClock())
    await put_all(scheduler, [f"{A}/0", f"{A}/1", f"{B}/0", f"{C}/0"])
    first = await got(scheduler)
    assert first.spec.target.host == "a.example"
    scheduler.finish(first)
    assert [(await got(scheduler)).spec.target.host[0] for _ in range(3)] == ["a", "b", "c"]


async def test_each_host_keeps_its_requests_in_input_order() -> None:
    """Within one host, requests start in the order they were put."""
    scheduler = Scheduler(capacity=100, clock=FakeClock())
    await put_all(scheduler, [f"{A}/{i}" for i in range(5)])
    assert [path_of(await got(scheduler)) for _ in range(5)] == [f"/{i}" for i in range(5)]


async def test_a_host_at_its_limit_is_skipped_while_other_hosts_are_served() -> None:
    """With per_host=2, a third request to a busy host waits, and a request to another host starts meanwhile."""
    scheduler = Scheduler(capacity=100, per_host=2, clock=FakeClock())
    await put_all(scheduler, [f"{A}/{i}" for i in range(4)] + [f"{B}/0"])
    started = [await got(scheduler) for _ in range(3)]
    assert sorted(job.spec.target.host for job in started) == ["a.example", "a.example", "b.example"]
    with pytest.raises(TimeoutError):  # A is full, B has nothing left
        await within(scheduler.get(), 0.05)
    scheduler.finish(started[0] if started[0].spec.target.host == "a.example" else started[1])
    freed = await got(scheduler)
    assert freed.spec.target.host == "a.example"


async def test_a_parked_worker_wakes_when_a_host_slot_frees() -> None:
    """A worker waiting because every host is at its limit gets the next request as soon as one finishes."""
    scheduler = Scheduler(capacity=100, per_host=1, clock=FakeClock())
    await put_all(scheduler, [f"{A}/0", f"{A}/1"])
    first = await got(scheduler)
    waiting = asyncio.ensure_future(scheduler.get())
    await asyncio.sleep(0.02)
    assert not waiting.done()
    scheduler.finish(first)
    second = await within(waiting, 1.0)
    assert second is not None
    assert path_of(second) == "/1"


async def test_a_parked_worker_wakes_when_a_request_is_put() -> None:
    """A worker waiting on an empty scheduler gets a request as soon as the producer puts one."""
    scheduler = Scheduler(capacity=100, clock=FakeClock())
    waiting = asyncio.ensure_future(scheduler.get())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await scheduler.put(spec(f"{A}/x"))
    job = await within(waiting, 1.0)
    assert job is not None
    assert job.attempts == 1


# -- capacity, closing, stopping -------------------------------------------------------------------
async def test_put_waits_while_the_scheduler_holds_its_capacity() -> None:
    """The producer cannot put more than ``capacity`` unfinished requests: memory stays bounded."""
    scheduler = Scheduler(capacity=3, clock=FakeClock())
    await put_all(scheduler, [f"{A}/0", f"{A}/1", f"{B}/0"])
    blocked = asyncio.ensure_future(scheduler.put(spec(f"{C}/0", 3)))
    await asyncio.sleep(0.02)
    assert not blocked.done()
    job = await got(scheduler)
    await asyncio.sleep(0.02)
    assert not blocked.done(), "a running request still counts against the capacity"
    scheduler.finish(job)
    await within(blocked, 1.0)  # the freed place lets the producer in
    assert scheduler.held == 3


async def test_held_counts_waiting_running_and_backing_off_requests() -> None:
    """``held`` is every request put and not finished, whether it waits, runs, or waits out a retry delay."""
    scheduler = Scheduler(capacity=10)
    await put_all(scheduler, [f"{A}/0", f"{A}/1", f"{A}/2"])
    assert scheduler.held == 3
    running = await got(scheduler)
    backing_off = await got(scheduler)
    scheduler.retry(backing_off, 30.0)
    assert scheduler.held == 3
    scheduler.finish(running)
    assert scheduler.held == 2
    scheduler.stop()  # cancels the retry timer


async def test_get_returns_none_only_once_closed_and_everything_finished() -> None:
    """After close(), workers get the remaining requests, then None once the last one has finished."""
    scheduler = Scheduler(capacity=10, clock=FakeClock())
    await put_all(scheduler, [f"{A}/0"])
    scheduler.close()
    job = await got(scheduler)
    with pytest.raises(TimeoutError):  # still running: it could be retried
        await within(scheduler.get(), 0.05)
    waiting = asyncio.ensure_future(scheduler.get())
    await asyncio.sleep(0.01)
    scheduler.finish(job)
    assert await within(waiting, 1.0) is None


async def test_closing_an_empty_scheduler_ends_the_waiting_workers() -> None:
    """Workers parked on an empty scheduler return None when the producer closes it."""
    scheduler = Scheduler(capacity=10, clock=FakeClock())
    waiting = [asyncio.ensure_future(scheduler.get()) for _ in range(3)]
    await asyncio.sleep(0.01)
    scheduler.close()
    results = await within(asyncio.gather(*waiting), 1.0)
    assert results == [None, None, None]


async def test_stop_releases_workers_and_producer_and_hands_out_nothing_more() -> None:
    """After stop(), get() returns None even with requests queued, and a blocked put() returns."""
    scheduler = Scheduler(capacity=1, clock=FakeClock())
    await put_all(scheduler, [f"{A}/0"])
    blocked = asyncio.ensure_future(scheduler.put(spec(f"{A}/1", 1)))
    await asyncio.sleep(0.01)
    scheduler.stop()
    await within(blocked, 1.0)  # the blocked producer is released
    assert await within(scheduler.get(), 1.0) is None


# -- host pauses (429/503 with Retry-After) --------------------------------------------------------
async def test_a_paused_host_is_skipped_while_other_hosts_are_served() -> None:
    """While a host is paused, none of its queued requests is handed out, and other hosts' requests are."""
    clock = FakeClock()
    scheduler = Scheduler(capacity=10, clock=clock)
    await put_all(scheduler, [f"{A}/0", f"{A}/1", f"{A}/2", f"{B}/0", f"{B}/1"])
    first = await got(scheduler)
    assert first.spec.target.host == "a.example"
    scheduler.pause(first.host, 30.0)
    scheduler.finish(first)
    served = [await got(scheduler) for _ in range(2)]
    assert [job.spec.target.host for job in served] == ["b.example", "b.example"]
    with pytest.raises(TimeoutError):
        await within(scheduler.get(), 0.05)
    scheduler.stop()


async def test_a_paused_host_starts_again_when_the_pause_ends() -> None:
    """A host paused for 0.2 s hands out its next queued request after 0.2 s, not before."""
    scheduler = Scheduler(capacity=10)
    await put_all(scheduler, [f"{A}/0", f"{A}/1"])
    first = await got(scheduler)
    paused_at = time.monotonic()
    scheduler.pause(first.host, 0.2)
    scheduler.finish(first)
    second = await within(scheduler.get(), 2.0)
    waited = time.monotonic() - paused_at
    assert second is not None, "the host never resumed"
    assert waited >= 0.2 - TIMER_SLACK


async def test_a_shorter_pause_does_not_cut_a_longer_one_short() -> None:
    """A second, shorter Retry-After does not end a longer pause early."""
    scheduler = Scheduler(capacity=10)
    await put_all(scheduler, [f"{A}/0", f"{A}/1", f"{A}/2"])
    first = await got(scheduler)
    second = await got(scheduler)
    paused_at = time.monotonic()
    scheduler.pause(first.host, 0.3)
    scheduler.pause(second.host, 0.05)
    scheduler.finish(first)
    scheduler.finish(second)
    third = await within(scheduler.get(), 2.0)
    assert third is not None
    assert time.monotonic() - paused_at >= 0.3 - TIMER_SLACK


async def test_a_request_waiting_for_its_rate_slot_respects_a_pause_begun_meanwhile() -> None:
    """A request already picked but waiting for its --rate slot does not start while its host is paused."""
    scheduler = Scheduler(capacity=10, rate=5)  # one start per 0.2 s
    await put_all(scheduler, [f"{A}/0", f"{A}/1"])
    first = await got(scheduler)
    pacing = asyncio.ensure_future(scheduler.get())  # its slot is 0.2 s away
    await asyncio.sleep(0.01)
    paused_at = time.monotonic()
    scheduler.pause(first.host, 0.5)  # the first request got a 429 with Retry-After
    scheduler.finish(first)
    second = await within(pacing, 2.0)
    assert second is not None
    assert time.monotonic() - paused_at >= 0.5 - TIMER_SLACK


def _spin_until(deadline: float) -> None:
    """Keep the event loop busy without yielding until ``deadline`` (``time.monotonic()``), like a burst of work."""
    while time.monotonic() < deadline:
        pass


def _millisecond_fraction() -> float:
    return (time.monotonic() * 1000) % 1


# uvloop's timers count whole milliseconds from the loop's time, so a pause timer may fire a few
# tenths of a millisecond before time.monotonic() reaches the pause's end; a scheduler that then
# re-checked its own clock left the host paused for good (the CLI hung). The scene below makes the
# timer fire in that gap every time.
def test_a_paused_host_resumes_under_uvloop_when_its_timer_fires_at_a_busy_moment() -> None:
    """Under uvloop (the CLI's loop), a paused host is served again once its pause timer has fired."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[bool, float | None]:
        """Whether the scene was set as planned, and how long until the host was served again (None: never)."""
        scheduler = Scheduler(capacity=10)
        await put_all(scheduler, [f"{A}/0", f"{A}/1"])
        first = await got(scheduler)
        # Pause late in a millisecond: uvloop's timer is due at the start of the millisecond
        # 100 ms on, a few tenths of a millisecond before paused_until.
        while not 0.5 < _millisecond_fraction() < 0.8:
            pass
        paused_at = time.monotonic()
        scheduler.pause(first.host, 0.1)
        planned = int(time.monotonic() * 1000) == int(paused_at * 1000)  # no preemption in between
        scheduler.finish(first)
        # The loop is busy (other responses) until just after that whole millisecond, so the
        # timer runs as soon as the loop looks again: after its due time, before paused_until.
        _spin_until((int(paused_at * 1000) + 100 + 0.05) / 1000)
        planned = planned and time.monotonic() < paused_at + 0.1 - 0.0001
        second = await within(scheduler.get(), 1.0)
        scheduler.stop()
        return planned, None if second is None else time.monotonic() - paused_at

    for _ in range(5):  # a preempted run does not set the scene: try again
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            planned, waited = runner.run(scenario())
        if planned:
            break
    else:
        pytest.skip("the machine is too busy to time the scene to a fraction of a millisecond")
    assert waited is not None, "the paused host was never served again"
    assert waited >= 0.1 - TIMER_SLACK


# -- retries ---------------------------------------------------------------------------------------
async def test_a_retry_waits_its_delay_without_holding_its_host_slot() -> None:
    """With per_host=1, another request to the host starts during a retry's backoff; the retry follows after it."""
    scheduler = Scheduler(capacity=10, per_host=1)
    await put_all(scheduler, [f"{A}/0", f"{A}/1"])
    first = await got(scheduler)
    retried_at = time.monotonic()
    scheduler.retry(first, 0.2)
    other = await got(scheduler)
    assert path_of(other) == "/1"
    scheduler.finish(other)
    again = await within(scheduler.get(), 2.0)
    assert again is first
    assert again.attempts == 2
    assert time.monotonic() - retried_at >= 0.2 - TIMER_SLACK


async def test_a_retry_goes_back_to_the_front_of_its_host_queue() -> None:
    """A request retried without delay is the next one its host hands out, ahead of requests never tried."""
    scheduler = Scheduler(capacity=10, per_host=1, clock=FakeClock())
    await put_all(scheduler, [f"{A}/0", f"{A}/1", f"{A}/2"])
    first = await got(scheduler)
    scheduler.retry(first, 0)
    again = await got(scheduler)
    assert again is first
    assert again.attempts == 2


async def test_a_backing_off_retry_keeps_the_scheduler_open() -> None:
    """After close(), workers do not end while a retry is still waiting out its delay."""
    scheduler = Scheduler(capacity=10)
    await put_all(scheduler, [f"{A}/0"])
    scheduler.close()
    job = await got(scheduler)
    scheduler.retry(job, 0.1)
    again = await within(scheduler.get(), 2.0)
    assert again is job
    scheduler.finish(job)
    assert await within(scheduler.get(), 1.0) is None


# -- rate pacing -----------------------------------------------------------------------------------
def assert_paced(stamps: list[float], interval: float) -> None:
    """The k-th start came at least k intervals after the first (which did not wait).

    Measured from the first start rather than gap by gap: a start the loop wakes late is
    only delayed, and the pacing rightly keeps its schedule, so the gap after a late start
    may be shorter than the interval without any burst.
    """
    assert len(stamps) >= 2
    for k, stamp in enumerate(stamps):
        assert stamp - stamps[0] >= k * interval - TIMER_SLACK, (k, [round(s - stamps[0], 4) for s in stamps])


async def test_rate_spaces_request_starts_evenly() -> None:
    """With rate=20, starts come 1/20 s apart, whatever host they go to."""
    scheduler = Scheduler(capacity=100, rate=20)
    await put_all(scheduler, [f"{A}/{i}" for i in range(4)] + [f"{B}/{i}" for i in range(4)])
    stamps = []
    for _ in range(8):
        await got_within(scheduler, 2.0)
        stamps.append(time.monotonic())
    assert_paced(stamps, 1 / 20)


async def got_within(scheduler: Scheduler, seconds: float) -> Job:
    job = await within(scheduler.get(), seconds)
    assert job is not None
    return job


async def test_rate_does_not_bank_a_burst_while_idle() -> None:
    """After an idle spell, starts are still spaced 1/R apart: unused time does not allow a burst."""
    scheduler = Scheduler(capacity=100, rate=10)
    await put_all(scheduler, [f"{A}/{i}" for i in range(4)])
    await got_within(scheduler, 1.0)
    await asyncio.sleep(0.5)  # five unused slots
    stamps = []
    for _ in range(3):
        await got_within(scheduler, 2.0)
        stamps.append(time.monotonic())
    assert_paced(stamps, 1 / 10)


async def test_rate_is_shared_by_workers_asking_at_the_same_time() -> None:
    """Five workers asking at once get their requests 1/R apart, not all together."""
    scheduler = Scheduler(capacity=100, rate=25)
    await put_all(scheduler, [f"{A}/{i}" for i in range(3)] + [f"{B}/{i}" for i in range(2)])
    stamps: list[float] = []

    async def worker() -> None:
        await got_within(scheduler, 2.0)
        stamps.append(time.monotonic())

    await within(asyncio.gather(*(worker() for _ in range(5))), 3.0)
    assert len(stamps) == 5
    assert_paced(sorted(stamps), 1 / 25)


# -- through the engine, against local servers ------------------------------------------------------
async def test_a_retry_backing_off_does_not_hold_the_only_worker(fresh_server: TestServer) -> None:
    """With one worker, the requests behind a 503 (no Retry-After) are fetched while its retry waits."""
    urls = [fresh_server.url("/flaky/sched-backoff?fail=1&status=503")] + [
        fresh_server.url(f"/ok?n={i}") for i in range(5)
    ]
    records = await collect(urls, concurrency=1, retries=1)
    assert all(record.ok for record in records)
    paths = fresh_server.stats.paths()
    assert paths[0].startswith("/flaky/")
    assert paths[-1].startswith("/flaky/"), f"the retry should come after the others: {paths}"
    flaky = next(record for record in records if "/flaky/" in record.url)
    assert flaky.attempts == 2


async def test_endless_input_is_read_only_as_fast_as_requests_finish(fresh_server: TestServer) -> None:
    """An endless input is read a bounded distance ahead of the requests that finished (flat memory)."""
    pulled = 0

    async def endless() -> AsyncIterator[str]:
        nonlocal pulled
        while True:
            pulled += 1
            yield fresh_server.url("/ok")

    records = 0
    async with asyncfetch.fetch(endless(), concurrency=4) as run:
        async for _record in run:
            records += 1
            if records == 50:
                break
    # The engine's lookahead is max(LOOKAHEAD, 2 x concurrency): the read-ahead is a bounded
    # constant, nowhere near "everything" (which would never end).
    assert pulled <= records + LOOKAHEAD + 4 + 1, pulled


# -- --per-host-rate, --max-host-errors -----------------------------------------------------------
async def test_a_host_waiting_for_its_pace_slot_does_not_hold_a_worker() -> None:
    """With per_host_rate=1, the second request to A waits about 1 s, while B and C are handed out at once."""
    scheduler = Scheduler(capacity=100, per_host_rate=1)
    await put_all(scheduler, [f"{A}/0", f"{A}/1", f"{B}/0"])
    assert path_of(await got(scheduler)) == "/0"
    second = await got(scheduler)
    assert second.spec.target.host == "b.example"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(waiting := asyncio.ensure_future(scheduler.get())), 0.5)
    await scheduler.put(spec(f"{C}/0", 3))  # a new host while A waits: served at once
    other = await within(waiting, 0.2)
    assert other is not None
    assert other.spec.target.host == "c.example"
    began = time.monotonic()
    last = await got_within(scheduler, 2.0)
    assert (last.spec.target.host, path_of(last)) == ("a.example", "/1")
    assert time.monotonic() - began > 0.2  # it waited for its slot (1 s after A/0)


async def test_a_host_given_up_hands_out_its_queue_at_once_past_its_limits() -> None:
    """After max_host_errors failures in a row, the host's waiting requests come out at once, marked down,
    in spite of per_host=1 and its pace."""
    scheduler = Scheduler(capacity=100, per_host=1, per_host_rate=0.1, max_host_errors=2)
    await put_all(scheduler, [f"{A}/{i}" for i in range(4)])
    first = await got(scheduler)
    scheduler.report(first, status=None, kind=ErrorKind.CONNECT, message="refused")
    scheduler.retry(first, 30.0)  # a long backoff: released at once when the host is given up
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(scheduler.get(), 0.2)  # paced: nothing before 10 s
    assert first.down is None
    scheduler.report(first, status=None, kind=ErrorKind.TIMEOUT, message="slow")
    jobs = [await got(scheduler) for _ in range(4)]
    assert all(job.down is not None and "max-host-errors 2" in job.down for job in jobs)
