"""Politeness: --per-host, --rate and host-level backoff, seen from the servers' side.

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
from tests.conftest import records_of, run_cli
from tests.server import TestServer

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
    urls = [slow.url(f"/sleep/500?n={i}") for i in range(12)] + [fast.url(f"/ok?n={i}") for i in range(40)]
    timed = await timed_fetch(urls, concurrency=10, per_host=2)
    assert len(timed) == 52
    assert all(record.ok for _, record in timed)
    assert slow.stats.max_in_flight == 2  # the limit holds, and is used
    assert fast.stats.max_in_flight <= 2
    first_slow_start = min(starts(slow))
    # No slow answer can come before 0.5 s: every fast request started while the slow host
    # was saturated, so the free workers went on with other hosts' work.
    assert max(starts(fast)) < first_slow_start + 0.5
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
