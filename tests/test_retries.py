"""Retries: which outcomes are tried again, how many times, how long in between, and for which methods."""

from __future__ import annotations

import email.utils
import json
import math
import time
from datetime import datetime
from urllib.parse import quote

import pytest

from asyncfetch.errors import ErrorKind
from asyncfetch.options import FetchOptions
from asyncfetch.record import Record
from asyncfetch.retry import DEFAULT_RETRY_STATUSES, parse_statuses
from tests.conftest import collect, unused_port
from tests.server import TestServer

pytestmark = pytest.mark.anyio

# Backoff waits kept short where the test is about whether, not when, a retry happens.
_QUICK = {"max_retry_wait": 0.05}


def _kind(record: Record) -> ErrorKind | None:
    return record.error.kind if record.error is not None else None


def _starts(server: TestServer, prefix: str) -> list[float]:
    return [seen.started for seen in server.stats.requests if seen.path.startswith(prefix)]


async def test_a_503_twice_then_200_takes_three_attempts(fresh_server: TestServer) -> None:
    """A server answering 503 twice and then 200 gives a 200 record after 3 attempts with retries=2."""
    [record] = await collect([fresh_server.url("/flaky/a?fail=2")], retries=2, **_QUICK)
    assert record.status == 200
    assert record.ok
    assert record.attempts == 3
    assert fresh_server.hits("/flaky/a") == 3


async def test_the_last_answer_is_kept_when_retries_run_out(fresh_server: TestServer) -> None:
    """When every attempt fails, the record is the last attempt's: status 503, not ok, no error kind."""
    [record] = await collect([fresh_server.url("/flaky/b?fail=5")], retries=1, **_QUICK)
    assert record.status == 503
    assert not record.ok
    assert record.error is None
    assert record.attempts == 2
    assert fresh_server.hits("/flaky/b") == 2


async def test_retries_zero_makes_one_attempt(fresh_server: TestServer) -> None:
    """With retries=0 a retryable answer is final after one attempt."""
    [record] = await collect([fresh_server.url("/flaky/c?fail=1")], retries=0)
    assert record.status == 503
    assert record.attempts == 1
    assert fresh_server.hits("/flaky/c") == 1


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_retryable_statuses_are_retried(fresh_server: TestServer, status: int) -> None:
    """429, 502, 503 and 504 are retried."""
    [record] = await collect([fresh_server.url(f"/flaky/d?status={status}")], retries=2, **_QUICK)
    assert record.status == 200
    assert record.attempts == 2


@pytest.mark.parametrize("status", [400, 404, 500, 501])
async def test_other_error_statuses_are_not_retried(fresh_server: TestServer, status: int) -> None:
    """Statuses outside 429/502/503/504 are final at once."""
    [record] = await collect([fresh_server.url(f"/flaky/e?status={status}")], retries=2, **_QUICK)
    assert record.status == status
    assert record.attempts == 1


async def test_retry_after_seconds_is_honoured(fresh_server: TestServer) -> None:
    """A Retry-After of 1 second delays the next attempt by about that second."""
    [record] = await collect([fresh_server.url("/flaky/f?retry_after=1")], retries=2)
    assert record.status == 200
    assert record.attempts == 2
    first, second = _starts(fresh_server, "/flaky/f")
    assert second - first >= 0.9


async def test_retry_after_as_an_http_date_is_honoured(fresh_server: TestServer) -> None:
    """A Retry-After given as an HTTP date two seconds ahead delays the next attempt until about then."""
    now, now_monotonic = time.time(), time.monotonic()
    when = quote(email.utils.formatdate(now + 2, usegmt=True))
    # The date has whole seconds: the retry is due at that second, read on the server's clock.
    due = now_monotonic + (math.floor(now + 2) - now)
    [record] = await collect([fresh_server.url(f"/flaky/k?retry_after={when}")], retries=1)
    assert record.status == 200
    first, second = _starts(fresh_server, "/flaky/k")
    assert first < second
    # Not before the date (uvloop's timers count whole milliseconds), nor long after it.
    assert due - 0.01 <= second < due + 3


async def test_retry_after_is_capped_by_max_retry_wait(fresh_server: TestServer) -> None:
    """A Retry-After longer than max_retry_wait is waited only max_retry_wait."""
    started = time.monotonic()
    [record] = await collect([fresh_server.url("/flaky/g?retry_after=120")], retries=2, max_retry_wait=0.3)
    assert record.status == 200
    assert record.attempts == 2
    first, second = _starts(fresh_server, "/flaky/g")
    assert second - first >= 0.25
    assert time.monotonic() - started < 10


async def test_fetched_at_and_elapsed_describe_the_last_attempt(fresh_server: TestServer) -> None:
    """After retries, fetched_at is the start of the last attempt and elapsed_ms its duration only."""
    before = time.time()
    [record] = await collect([fresh_server.url("/flaky/h?retry_after=1")], retries=1)
    assert record.attempts == 2
    started = datetime.strptime(record.fetched_at, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    assert started >= before + 0.9
    assert record.elapsed_ms < 900


async def test_retries_wait_a_backoff_before_each_attempt(fresh_server: TestServer) -> None:
    """Without Retry-After, each retry waits a backoff first (not a tight loop), and the run still ends soon."""
    started = time.monotonic()
    [record] = await collect([fresh_server.url("/flaky/j?fail=2")], retries=2)
    assert record.attempts == 3
    first, second, third = _starts(fresh_server, "/flaky/j")
    assert second - first >= 0.1
    assert third - second >= 0.1
    assert time.monotonic() - started < 10


async def test_a_refused_connection_is_retried_with_backoff() -> None:
    """A connect error is retried up to retries times, waiting between attempts."""
    started = time.monotonic()
    [record] = await collect([f"http://127.0.0.1:{unused_port()}/"], retries=2)
    assert _kind(record) is ErrorKind.CONNECT
    assert record.attempts == 3
    assert 0.2 <= time.monotonic() - started < 10


async def test_a_timeout_is_retried(server: TestServer) -> None:
    """A GET that times out is tried again."""
    [record] = await collect([server.url("/stall-headers")], timeout=0.2, retries=1, **_QUICK)
    assert _kind(record) is ErrorKind.TIMEOUT
    assert record.attempts == 2


@pytest.mark.parametrize(("path", "kind"), [("/reset", ErrorKind.READ), ("/close", ErrorKind.PROTOCOL)])
async def test_an_idempotent_request_is_retried_after_read_and_protocol_errors(
    fresh_server: TestServer, path: str, kind: ErrorKind
) -> None:
    """GET and PUT are tried again after a read or protocol error."""
    put = json.dumps({"url": fresh_server.url(path), "method": "PUT", "body": "x"})
    records = await collect([fresh_server.url(path), put], retries=2, **_QUICK)
    assert [(_kind(r), r.attempts) for r in records] == [(kind, 3), (kind, 3)]
    assert fresh_server.hits(path) == 6


@pytest.mark.parametrize("path", ["/reset", "/close"])
async def test_a_post_is_not_retried_after_the_request_may_have_arrived(fresh_server: TestServer, path: str) -> None:
    """A POST that failed after it was sent (read or protocol error) is not sent again."""
    item = json.dumps({"url": fresh_server.url(path), "body": "charge the card"})
    [record] = await collect([item], retries=2, **_QUICK)
    assert record.error is not None
    assert record.attempts == 1
    assert fresh_server.hits(path) == 1


async def test_a_post_is_not_retried_after_a_503(fresh_server: TestServer) -> None:
    """A POST answered with 503 reached the server, so it is not sent again."""
    item = json.dumps({"url": fresh_server.url("/flaky/i?fail=1"), "body": "x"})
    [record] = await collect([item], retries=2, **_QUICK)
    assert record.status == 503
    assert record.attempts == 1
    assert fresh_server.hits("/flaky/i") == 1


async def test_a_post_is_retried_after_a_connect_error() -> None:
    """A POST that never connected never reached the server: it is retried."""
    item = json.dumps({"url": f"http://127.0.0.1:{unused_port()}/", "body": "x"})
    [record] = await collect([item], retries=2, **_QUICK)
    assert _kind(record) is ErrorKind.CONNECT
    assert record.attempts == 3


async def test_dns_errors_are_never_retried() -> None:
    """A name that does not resolve will not resolve a second later: one attempt."""
    [record] = await collect(["http://retry-me.invalid/"], retries=3, **_QUICK)
    assert _kind(record) is ErrorKind.DNS
    assert record.attempts == 1


async def test_tls_errors_are_never_retried(tls_server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate that failed to verify will fail again: one attempt."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    [record] = await collect([tls_server.url("/ok")], retries=3, **_QUICK)
    assert _kind(record) is ErrorKind.TLS
    assert record.attempts == 1


async def test_too_large_and_too_many_redirects_are_never_retried(fresh_server: TestServer) -> None:
    """Errors that would repeat identically (too_large, too_many_redirects) get one attempt."""
    records = await collect(
        [fresh_server.url("/bytes/5000"), fresh_server.url("/redirect/3")], max_size=100, max_redirects=1, retries=3
    )
    assert {(_kind(r), r.attempts) for r in records} == {(ErrorKind.TOO_LARGE, 1), (ErrorKind.TOO_MANY_REDIRECTS, 1)}
    assert fresh_server.hits("/bytes/5000") == 1


# -- --retry-on ------------------------------------------------------------------------------------
def test_retry_on_parses_codes_and_ranges_and_names_itself_when_wrong() -> None:
    """'429,500-599' is 429 and every 5xx; bad values raise a ValueError naming retry-on."""
    assert parse_statuses("429,500-599") == frozenset({429, *range(500, 600)})
    assert parse_statuses("none") == frozenset()
    assert FetchOptions().retry_on == DEFAULT_RETRY_STATUSES == frozenset({429, 502, 503, 504})
    # Text is accepted too (what a caller of fetch(..., retry_on="500") gives), and stored parsed.
    assert FetchOptions(retry_on="500").retry_on == frozenset({500})  # type: ignore[arg-type]
    for bad in ("42", "600", "503-500", "abc", "429,,500"):
        with pytest.raises(ValueError, match="retry-on"):
            FetchOptions(retry_on=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry-on"):
        FetchOptions(retry_on=frozenset({700}))


async def test_retry_on_chooses_the_statuses_retried(fresh_server: TestServer) -> None:
    """With retry_on='500', a 500 is retried and a 503 is not."""
    records = await collect(
        [fresh_server.url("/flaky/ro500?fail=1&status=500"), fresh_server.url("/flaky/ro503?fail=1&status=503")],
        retry_on="500",
        max_retry_wait=0,
    )
    by_url = {r.url.split("/")[-1].split("?")[0]: r for r in records}
    assert (by_url["ro500"].status, by_url["ro500"].attempts) == (200, 2)
    assert (by_url["ro503"].status, by_url["ro503"].attempts) == (503, 1)
