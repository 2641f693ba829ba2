"""Keep-alive limits of real servers: a connection closed after 2 requests, or after 1 s idle, loses nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

import asyncfetch
from tests.conftest import collect
from tests.interop.conftest import WebServer

pytestmark = pytest.mark.anyio

LIMITED = ["nginx_keepalive_2", "apache2_keepalive_2", "lighttpd_keepalive_2"]


def _access_log_mark(server: WebServer) -> int:
    """How many lines nginx's access log has now: read past it to see only this test's requests."""
    return len((server.log_dir / "access.log").read_text().splitlines())


def _connections_since(server: WebServer, mark: int, requests: int) -> dict[str, int]:
    """nginx's own account of the ``requests`` logged after ``mark``: connection number -> requests on it.

    nginx logs a request after its answer has gone out, so the last lines may lag: wait for them.
    """
    deadline = time.monotonic() + 10
    while True:
        lines = (server.log_dir / "access.log").read_text().splitlines()[mark:]
        if len(lines) >= requests:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"nginx logged {len(lines)} of {requests} requests within 10 s")
        time.sleep(0.02)
    per_connection: dict[str, int] = {}
    for line in lines:
        connection, requests_so_far = line.split()[:2]
        per_connection[connection] = max(per_connection.get(connection, 0), int(requests_so_far))
    return per_connection


@pytest.mark.parametrize("name", LIMITED)
async def test_a_server_that_closes_after_2_requests_loses_none_of_150(
    name: str, request: pytest.FixtureRequest
) -> None:
    """150 GETs where each connection serves 2: all complete on the first attempt, and the server did close."""
    server: WebServer = request.getfixturevalue(name)
    file = server.tree["/1k.bin"]
    records = await collect([server.url(file.path)] * 150, concurrency=4, include_headers=True)
    assert len(records) == 150
    assert {(r.status, r.size, r.sha256, r.error, r.attempts) for r in records} == {
        (200, file.size, file.sha256, None, 1)
    }
    # The limit was in force: every second answer on a connection said it was the last.
    closing = sum(1 for r in records if r.headers is not None and r.headers.get("connection", "").lower() == "close")
    assert closing >= 150 // 2 - 4


async def test_nginx_counts_no_more_than_2_requests_on_any_connection(nginx_keepalive_2: WebServer) -> None:
    """nginx's access log confirms it: at least 75 connections for 150 requests, none carrying more than 2."""
    mark = _access_log_mark(nginx_keepalive_2)
    records = await collect([nginx_keepalive_2.url("/1k.bin")] * 150, concurrency=4)
    assert all(r.ok for r in records)
    per_connection = _connections_since(nginx_keepalive_2, mark, 150)
    assert sum(per_connection.values()) == 150
    assert max(per_connection.values()) == 2
    assert len(per_connection) >= 75


async def test_post_requests_survive_a_limit_of_2_per_connection(nginx_keepalive_2: WebServer) -> None:
    """POSTs (never resent blindly) go on fresh connections when the last answer said close: all 100 complete."""
    records = await collect(
        [{"url": nginx_keepalive_2.url("/method"), "method": "POST", "body": "x" * 100}] * 100,
        concurrency=4,
        include_body=True,
    )
    assert {(r.status, r.body, r.attempts) for r in records} == {(200, "POST\n", 1)}


async def _collect_paced(requests: AsyncIterator[str | dict[str, str]], **options: Any) -> list[asyncfetch.Record]:
    """Every record of a fetch of ``requests`` (an async iterable), in completion order."""
    return [record async for record in asyncfetch.fetch(requests, **options)]


async def _spread(urls: Sequence[str | dict[str, str]], gaps: Sequence[float]) -> AsyncIterator[str | dict[str, str]]:
    """The requests, the n-th after a pause of ``gaps[n - 1]`` s: each starts once the one before is done."""
    for index, url in enumerate(urls):
        if index:
            await asyncio.sleep(gaps[index - 1])
        yield url


# Pauses around the servers' 1 s idle timeout: well past it (the close has arrived) and just short of
# it (the close may cross our next request on the wire).
GAPS = (1.2, 0.1, 1.2, 0.9, 1.05)


@pytest.mark.parametrize("name", ["nginx_idle_1s", "apache2_keepalive_2", "lighttpd_keepalive_2"])
async def test_requests_spread_across_a_1s_idle_timeout_all_complete(name: str, request: pytest.FixtureRequest) -> None:
    """GETs paced around the server's idle timeout: every one completes, none counted as a failed attempt."""
    server: WebServer = request.getfixturevalue(name)
    file = server.tree["/100k.bin"]
    urls = [server.url(file.path)] * (len(GAPS) + 1)
    records = await _collect_paced(_spread(urls, GAPS), concurrency=1)
    assert [(r.status, r.sha256, r.attempts) for r in records] == [(200, file.sha256, 1)] * len(urls)


async def test_nginx_did_close_the_idle_connections(nginx_idle_1s: WebServer) -> None:
    """The pacing above really crosses the timeout: nginx saw more than one connection for the paced requests."""
    mark = _access_log_mark(nginx_idle_1s)
    records = await _collect_paced(_spread([nginx_idle_1s.url("/1k.bin")] * 3, (1.2, 1.2)), concurrency=1)
    assert all(r.ok for r in records)
    assert len(_connections_since(nginx_idle_1s, mark, 3)) == 3


async def test_a_post_after_the_idle_timeout_goes_on_a_fresh_connection(nginx_idle_1s: WebServer) -> None:
    """A POST sent after the server closed the idle connection is not lost (it cannot be resent blindly)."""
    get = nginx_idle_1s.url("/1k.bin")
    post = {"url": nginx_idle_1s.url("/method"), "method": "POST", "body": "payload"}
    records = await _collect_paced(_spread([get, post, get, post], (1.2, 1.2, 1.2)), concurrency=1, include_body=True)
    posts = [r for r in records if r.method == "POST"]
    assert [(r.status, r.body, r.error) for r in posts] == [(200, "POST\n", None)] * 2
