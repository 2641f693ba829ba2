"""Politeness: --per-host, --rate, --per-host-rate, --adaptive, --max-host-errors and host-level backoff,
seen from the servers' side.

Every assertion here reads what the local servers recorded (the time each request started,
the most in flight at once): concurrency and timing are invisible to a mocked transport.
Each server is a host of its own (a host is scheme, host and port).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

import asyncfetch
from asyncfetch.errors import ErrorKind
from asyncfetch.politeness import Adaptive
from tests.conftest import records_of, run_cli, unused_port
from tests.server import Blackhole, Seen, TestServer

pytestmark = pytest.mark.anyio

# A timer may end up to about a millisecond early (uvloop counts whole milliseconds), and a
# server's stamp is taken a moment after the wake-up: allow this much on time lower bounds.
TIMER_SLACK = 0.005

# The servers stamp a request when they have parsed its head, a variable moment after the
# client started it: a new connection costs a handshake, the server thread waits for its
# turn at the GIL, loop wake-ups are rounded to the millisecond. Two starts paced exactly 1/R
# apart may therefore be stamped a little closer together. Counting starts in windows of
# 1 s minus 50 ms (5 %) absorbs that, while a burst (R + 1 starts in 0.95 s) still fails.
RATE_WINDOW_SLACK = 0.05


async def timed_fetch(urls: list[str], **options: Any) -> list[tuple[float, asyncfetch.Record]]:
    """Every record with the ``time.monotonic()`` at which the caller received it."""
    return [(time.monotonic(), record) async for record in asyncfetch.fetch(urls, **options)]


def starts(*servers: TestServer, prefix: str = "/") -> list[float]:
    """The start times of the servers' requests whose path begins with ``prefix``, sorted."""
    return sorted(seen.started for server in servers for seen in server.stats.requests if seen.path.startswith(prefix))


def most_in_window(stamps: list[float], width: float) -> int:
    """The largest number of stamps inside any window ``(t - width, t]``."""
    ordered = sorted(stamps)
    most = 0
    first = 0
    for last, stamp in enumerate(ordered):
        while ordered[first] <= stamp - width:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_most_in_window_counts_the_densest_window() -> None:
    """The window counter used below finds the densest window and excludes its open end."""
    assert most_in_window([0.0, 0.1, 0.2, 1.0, 1.05], 1.0) == 4
    assert most_in_window([0.0, 0.5, 1.0, 1.5], 1.0) == 2
    assert most_in_window([], 1.0) == 0


# -- --per-host --------------------------------------------------------------------------------------
async def test_a_saturated_host_does_not_idle_the_workers(
    fresh_server: TestServer, other_fresh_server: TestServer
) -> None:
    """With --per-host 2 and -c 10, a slow host never has more than 2 in flight, and a fast host's requests
    listed after all the slow ones are fetched while the slow host is busy."""
    slow, fast = fresh_server, other_fresh_server
    # More slow requests than workers: a design where a worker holding a request waits for its
    # host's slot would end with every worker waiting on the slow host.
    # Few enough fast ones (5 rounds of 2) to end well within the slow host's 0.5 s on a loaded machine.
    urls = [slow.url(f"/sleep/500?n={i}") for i in range(12)] + [fast.url(f"/ok?n={i}") for i in range(10)]
    timed = await timed_fetch(urls, concurrency=10, per_host=2)
    assert len(timed) == 22
    assert all(record.ok for _, record in timed)
    assert slow.stats.max_in_flight == 2  # the limit holds, and is used
    assert fast.stats.max_in_flight <= 2
    # Every fast request ended before any slow answer came: the free workers went on with other
    # hosts' work while the slow host was saturated.
    slow_done = [at for at, record in timed if record.url.startswith(slow.base)]
    fast_done = [at for at, record in timed if record.url.startswith(fast.base)]
    assert max(fast_done) < min(slow_done)


def test_per_host_limits_each_host_separately_from_the_cli(
    fresh_server: TestServer, other_fresh_server: TestServer
) -> None:
    """With --per-host 1, each host has one request in flight at a time, and the two hosts are served side by side."""
    urls = [fresh_server.url(f"/sleep/200?n={i}") for i in range(3)] + [
        other_fresh_server.url(f"/sleep/200?n={i}") for i in range(3)
    ]
    result = run_cli("-q", "--per-host", "1", "-c", "10", input="\n".join(urls) + "\n")
    assert result.returncode == 0, result.stderr
    assert len(records_of(result.stdout)) == 6
    assert fresh_server.stats.max_in_flight == 1
    assert other_fresh_server.stats.max_in_flight == 1
    a, b = starts(fresh_server), starts(other_fresh_server)
    # One at a time per host: each host's starts are a full answer (0.2 s) apart...
    assert all(later - earlier >= 0.2 - TIMER_SLACK for earlier, later in itertools.pairwise(a))
    # ...and the hosts ran in parallel, not one after the other.
    assert abs(a[0] - b[0]) < 0.15


# -- --rate ------------------------------------------------------------------------------------------
def test_rate_caps_starts_per_second_from_the_cli(fresh_server: TestServer) -> None:
    """With --rate 25 -c 10, no second holds more than 25 request starts, and 50 requests take at least 49/25 s."""
    rate, count = 25, 50
    urls = [fresh_server.url(f"/ok?n={i}") for i in range(count)]
    result = run_cli("-q", "--rate", str(rate), "-c", "10", input="\n".join(urls) + "\n")
    assert result.returncode == 0, result.stderr
    assert len(records_of(result.stdout)) == count
    stamps = starts(fresh_server)
    assert len(stamps) == count
    assert most_in_window(stamps, 1.0 - RATE_WINDOW_SLACK) <= rate
    assert stamps[-1] - stamps[0] >= (count - 1) / rate - RATE_WINDOW_SLACK


async def test_rate_is_overall_and_holds_with_per_host_and_concurrency(
    fresh_server: TestServer, other_fresh_server: TestServer
) -> None:
    """--rate 20 counts starts across all hosts together, while --per-host 1 and -c 10 still hold."""
    rate = 20
    urls = [fresh_server.url(f"/sleep/30?n={i}") for i in range(15)] + [
        other_fresh_server.url(f"/sleep/30?n={i}") for i in range(15)
    ]
    records = [record async for record in asyncfetch.fetch(urls, rate=rate, per_host=1, concurrency=10)]
    assert all(record.ok for record in records)
    stamps = starts(fresh_server, other_fresh_server)
    assert len(stamps) == 30
    assert most_in_window(stamps, 1.0 - RATE_WINDOW_SLACK) <= rate
    assert stamps[-1] - stamps[0] >= 29 / rate - RATE_WINDOW_SLACK
    assert fresh_server.stats.max_in_flight == 1
    assert other_fresh_server.stats.max_in_flight == 1


# -- host-level backoff ------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_pauses_every_queued_request_to_that_host(
    fresh_server: TestServer, other_fresh_server: TestServer, status: int
) -> None:
    """After a 429 or 503 with Retry-After: 1, no request to that host starts for 1 s, while another host's go on."""
    paused, busy = fresh_server, other_fresh_server
    urls = [paused.url(f"/flaky/pause-{status}?fail=1&status={status}&retry_after=1")]
    urls += [paused.url(f"/ok?n={i}") for i in range(4)]
    urls += [busy.url(f"/sleep/100?n={i}") for i in range(8)]
    records = await collect_all(urls, concurrency=4, per_host=1)
    assert all(record.ok for record in records), [r.to_dict() for r in records if not r.ok]
    answered = min(starts(paused, prefix="/flaky/"))
    others = starts(paused, prefix="/ok")
    assert len(others) == 4
    # The pause runs from the client receiving the answer, a moment after the server's stamp.
    assert min(others) >= answered + 1.0 - TIMER_SLACK
    # Meanwhile the other host was served: the pause held back one host, not the workers.
    assert any(answered < stamp < answered + 1.0 for stamp in starts(busy))
    flaky = next(record for record in records if "/flaky/" in record.url)
    assert flaky.attempts == 2


async def collect_all(urls: list[str], **options: Any) -> list[asyncfetch.Record]:
    return [record async for record in asyncfetch.fetch(urls, **options)]


async def test_a_pause_holds_the_host_even_when_the_answer_is_not_retried(fresh_server: TestServer) -> None:
    """With --retries 0, a 429 with Retry-After is the final record, and the host's other requests still wait."""
    urls = [fresh_server.url("/status/429?retry_after=1")] + [fresh_server.url(f"/ok?n={i}") for i in range(3)]
    records = await collect_all(urls, concurrency=4, per_host=1, retries=0)
    assert sorted(record.status or 0 for record in records) == [200, 200, 200, 429]
    answered = min(starts(fresh_server, prefix="/status/"))
    assert min(starts(fresh_server, prefix="/ok")) >= answered + 1.0 - TIMER_SLACK


async def test_a_host_pause_is_capped_by_max_retry_wait(fresh_server: TestServer) -> None:
    """A Retry-After of 30 s pauses the host only --max-retry-wait (0.5 s), like the retry itself."""
    urls = [fresh_server.url("/flaky/capped?fail=1&status=429&retry_after=30"), fresh_server.url("/ok")]
    began = time.monotonic()
    records = await collect_all(urls, concurrency=2, per_host=1, max_retry_wait=0.5)
    assert all(record.ok for record in records)
    answered = min(starts(fresh_server, prefix="/flaky/"))
    assert min(starts(fresh_server, prefix="/ok")) >= answered + 0.5 - TIMER_SLACK
    assert time.monotonic() - began < 10


async def test_retry_after_holds_requests_already_waiting_for_their_rate_slot(fresh_server: TestServer) -> None:
    """With --rate 4, a 429 with Retry-After: 1 also holds the host's requests that were waiting for a rate slot."""
    urls = [fresh_server.url("/flaky/rate-pause?fail=1&status=429&retry_after=1")]
    urls += [fresh_server.url(f"/ok?n={i}") for i in range(3)]
    records = await collect_all(urls, concurrency=4, rate=4)
    assert all(record.ok for record in records)
    answered = min(starts(fresh_server, prefix="/flaky/"))
    assert min(starts(fresh_server, prefix="/ok")) >= answered + 1.0 - TIMER_SLACK


# -- --per-host-rate -----------------------------------------------------------------------------
async def test_per_host_rate_spaces_each_hosts_starts_while_hosts_run_side_by_side(
    fresh_server: TestServer, other_fresh_server: TestServer
) -> None:
    """--per-host-rate 10: each host's starts are at least 1/10 s apart with no burst, and the two hosts overlap."""
    rate = 10
    urls = [server.url(f"/ok?n={i}") for i in range(12) for server in (fresh_server, other_fresh_server)]
    records = await collect_all(urls, per_host_rate=rate, concurrency=10)
    assert all(record.ok for record in records)
    for server in (fresh_server, other_fresh_server):
        stamps = starts(server)
        assert len(stamps) == 12
        assert all(b - a >= 1 / rate - RATE_WINDOW_SLACK for a, b in itertools.pairwise(stamps))
        assert most_in_window(stamps, 1.0 - RATE_WINDOW_SLACK) <= rate
    a, b = starts(fresh_server), starts(other_fresh_server)
    # Per host, not overall: the second host did not wait for the first to finish.
    assert b[0] < a[-1] - 0.5
    assert most_in_window(a + b, 1.0 - RATE_WINDOW_SLACK) > rate


async def test_per_host_rate_combines_with_rate_and_per_host(
    fresh_server: TestServer, other_fresh_server: TestServer
) -> None:
    """--per-host-rate 6 with --rate 8 and --per-host 1: every limit holds at once, retries included."""
    urls = [server.url(f"/sleep/20?n={i}") for i in range(6) for server in (fresh_server, other_fresh_server)]
    urls.append(fresh_server.url("/flaky/phr?fail=1"))  # one retry, paced like the rest
    records = await collect_all(urls, per_host_rate=6, rate=8, per_host=1, concurrency=10)
    assert all(record.ok for record in records)
    for server in (fresh_server, other_fresh_server):
        stamps = starts(server)
        assert all(b - a >= 1 / 6 - RATE_WINDOW_SLACK for a, b in itertools.pairwise(stamps))
        assert server.stats.max_in_flight == 1
    together = starts(fresh_server, other_fresh_server)
    assert len(together) == 14
    assert most_in_window(together, 1.0 - RATE_WINDOW_SLACK) <= 8


# -- --max-host-errors ---------------------------------------------------------------------------
async def test_the_breaker_gives_up_a_host_after_n_failures_in_a_row_and_only_that_host(
    fresh_server: TestServer,
) -> None:
    """With --max-host-errors 3, a refusing host gets 3 connect records, then host_unreachable ones, nothing sent;
    another host in the same run is untouched."""
    dead = f"http://127.0.0.1:{unused_port()}"
    urls = [f"{dead}/{i}" for i in range(20)] + [fresh_server.url(f"/ok?n={i}") for i in range(10)]
    records = await collect_all(urls, concurrency=1, retries=0, max_host_errors=3)
    assert len(records) == 30
    kinds = [r.error.kind if r.error else None for r in records if r.url.startswith(dead)]
    assert kinds.count(ErrorKind.CONNECT) == 3
    assert kinds.count(ErrorKind.HOST_UNREACHABLE) == 17
    refused = [r for r in records if r.error and r.error.kind is ErrorKind.HOST_UNREACHABLE]
    assert all(r.attempts == 0 and "max-host-errors 3" in r.error.message for r in refused if r.error)
    assert all(r.ok for r in records if r.url.startswith(fresh_server.base))


async def test_the_breaker_counts_retries_and_max_host_errors_0_disables_it() -> None:
    """Failed attempts count, retries included (2 requests x 2 attempts trip 4); with 0 every request is tried."""
    dead = f"http://127.0.0.1:{unused_port()}"
    urls = [f"{dead}/{i}" for i in range(6)]
    records = await collect_all(urls, concurrency=1, retries=1, max_retry_wait=0, max_host_errors=4)
    assert [r.error.kind for r in records if r.error] == [ErrorKind.CONNECT] * 2 + [ErrorKind.HOST_UNREACHABLE] * 4
    assert [r.attempts for r in records] == [2, 2, 0, 0, 0, 0]
    records = await collect_all(urls, concurrency=1, retries=0, max_host_errors=0)
    assert [r.error.kind for r in records if r.error] == [ErrorKind.CONNECT] * 6


async def test_a_blackholed_host_does_not_cost_each_request_its_deadline(fresh_server: TestServer) -> None:
    """2,000 URLs on a host that accepts and never answers: only the first wave is sent (server connections
    <= 2 x -c), every other request is ended unsent; the other host's requests all succeed."""
    hole = Blackhole().start()
    try:
        urls = [hole.url(f"/{i}") for i in range(2000)] + [fresh_server.url(f"/ok?n={i}") for i in range(50)]
        records = await collect_all(urls, concurrency=20, timeout=0.5, retries=2, max_retry_wait=0, max_host_errors=5)
        connections = hole.connections
    finally:
        hole.stop()
    assert len(records) == 2050
    lost = [r for r in records if r.url.startswith(f"http://127.0.0.1:{hole.port}/")]
    kinds = [r.error.kind for r in lost if r.error]
    assert len(kinds) == 2000
    assert kinds.count(ErrorKind.TIMEOUT) <= 20
    assert kinds.count(ErrorKind.HOST_UNREACHABLE) >= 1980
    assert sum(r.attempts for r in lost) <= 40
    assert connections <= 40
    assert all(r.ok for r in records if r.url.startswith(fresh_server.base))


# -- --adaptive ------------------------------------------------------------------------------------
def spaced(requests: list[Seen]) -> bool:
    """The last three of these requests started at least 0.25 s apart, one after the other."""
    stamps = [seen.started for seen in requests[-3:]]
    return len(stamps) == 3 and all(b - a >= 0.25 - RATE_WINDOW_SLACK for a, b in itertools.pairwise(stamps))


async def test_adaptive_backs_off_while_a_host_answers_503_and_recovers_when_it_is_healthy(
    fresh_server: TestServer,
) -> None:
    """A host that starts and stops answering 503: the 503s shrink its window and then space its starts
    (>= 0.25 s apart); healthy answers bring it back to --per-host 4, never above."""
    gate = "adaptive"
    urls = [fresh_server.url(f"/gate/{gate}?ms=50&n={i}") for i in range(400)]
    stats = fresh_server.stats
    phase = "healthy"
    records = unavailable = closed_at = opened_at = 0
    async for record in asyncfetch.fetch(urls, adaptive=True, per_host=4, concurrency=8, retries=0):
        records += 1
        unavailable += record.status == 503
        if phase == "healthy" and records == 20:
            assert stats.max_in_flight == 4  # the user's limit, used
            fresh_server.closed_gates.add(gate)
            closed_at, phase = len(stats.requests), "closed"
        elif phase == "closed" and spaced(stats.requests[closed_at:]):
            # The 503s halved the window (4 -> 2 -> 1), then spaced the starts out: open again.
            fresh_server.closed_gates.discard(gate)
            opened_at, phase = len(stats.requests), "open"
            stats.max_in_flight = stats.in_flight
        elif phase == "open" and records >= opened_at + 60:
            break
    assert phase == "open", "the 503s never spaced the host's starts out"
    assert unavailable >= 3
    stamps = [seen.started for seen in stats.requests]
    # Recovered: back to 4 in flight at once, never above the user's --per-host.
    assert stats.max_in_flight == 4
    assert all(b - a < 0.25 for a, b in itertools.pairwise(stamps[-10:]))


def test_adaptive_rule_halves_the_window_then_spaces_starts_then_recovers_step_by_step() -> None:
    """The AIMD rule of asyncfetch.politeness: halve to 1, then double the spacing; heal spacing first, then window."""
    host = Adaptive(ceiling=8, min_interval=0.0)
    signal: dict[str, Any] = {"status": 503, "kind": None, "elapsed": 0.01, "size": 0}
    healthy: dict[str, Any] = {"status": 200, "kind": None, "elapsed": 0.01, "size": 10}
    now = 0.0
    limits = []
    for _ in range(5):
        now += 1
        assert host.observe(started=now, now=now, **signal)
        limits.append((host.limit, host.interval))
    assert limits == [(4, 0.0), (2, 0.0), (1, 0.0), (1, 0.25), (1, 0.5)]
    # An answer to a request sent before the last back-off does not back off again.
    assert not host.observe(started=now - 0.5, now=now + 0.1, **signal)
    assert host.interval == 0.5
    steps = 0
    while host.interval > 0:
        host.observe(started=now, now=now, **healthy)
        steps += 1
    assert steps > 5  # gradually, not at once
    assert host.limit == 1
    while host.limit < 8:
        host.observe(started=now, now=now, **healthy)
        steps += 1
    for _ in range(100):
        host.observe(started=now, now=now, **healthy)
    assert host.limit == 8  # never past the ceiling


def test_adaptive_counts_timeouts_and_markedly_slow_answers_but_not_big_bodies() -> None:
    """A timeout backs off; after warm-up, a 4x slower answer (over 1 s) backs off, unless it is big."""
    host = Adaptive(ceiling=4, min_interval=0.1)
    assert host.observe(started=1, now=1, status=None, kind=ErrorKind.TIMEOUT, elapsed=5, size=0)
    assert host.limit == 2
    for _ in range(10):
        assert not host.observe(started=2, now=2, status=200, kind=None, elapsed=0.1, size=100)
    assert not host.observe(started=3, now=3, status=200, kind=None, elapsed=2.0, size=50 * 1024 * 1024)
    assert host.observe(started=3, now=3, status=200, kind=None, elapsed=2.0, size=100)
    assert host.interval >= 0.1  # never faster than --per-host-rate
