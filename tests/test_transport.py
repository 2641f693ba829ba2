"""Our HTTP/1.1 pool: keep-alive reuse, stale connections, real concurrency, body framings."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import pytest

from asyncfetch.errors import ErrorKind
from asyncfetch.transport import MAX_HEAD_BYTES, MAX_HEADERS, MAX_INTERIM_RESPONSES, ConnectionPool
from tests.conftest import collect
from tests.server import TestServer, _pattern

pytestmark = pytest.mark.anyio


async def test_sequential_requests_reuse_one_connection(fresh_server: TestServer) -> None:
    """Fifty requests one after another to one host go over a single kept-alive connection."""
    records = await collect([fresh_server.url("/ok")] * 50, concurrency=1)
    assert [r.status for r in records] == [200] * 50
    assert fresh_server.stats.connections == 1


async def test_connections_stay_within_the_concurrency(fresh_server: TestServer) -> None:
    """Many requests with five in flight open at most five connections."""
    records = await collect([fresh_server.url("/bytes/2000")] * 200, concurrency=5)
    assert all(r.ok for r in records)
    assert fresh_server.stats.connections <= 5


async def test_concurrency_puts_n_requests_in_flight(fresh_server: TestServer) -> None:
    """With concurrency 10 and slow answers, exactly ten requests are at the server at once."""
    records = await collect([fresh_server.url("/sleep/200")] * 25, concurrency=10)
    assert all(r.ok for r in records)
    assert fresh_server.stats.max_in_flight == 10


async def test_a_connection_the_server_closed_while_idle_is_not_an_error(fresh_server: TestServer) -> None:
    """After a server drops a kept-alive connection, the next GET on that host still succeeds first time."""
    items = [fresh_server.url("/bye"), fresh_server.url("/ok")] * 5
    records = await collect(items, concurrency=1, retries=0)
    assert [(r.status, r.error) for r in records] == [(200, None)] * 10
    assert all(r.attempts == 1 for r in records)


async def test_a_reused_connection_closed_under_a_get_is_retried_transparently(fresh_server: TestServer) -> None:
    """A kept-alive connection closed as a GET is sent on it is replaced; the GET succeeds in one attempt."""
    records = await collect([fresh_server.url("/ok"), fresh_server.url("/close-once/a")], concurrency=1, retries=0)
    second = max(records, key=lambda r: r.index)
    assert second.error is None
    assert second.status == 200
    assert second.attempts == 1
    assert fresh_server.hits("/close-once/a") == 2
    assert fresh_server.stats.connections == 2


async def test_a_post_on_a_reused_connection_that_closes_is_not_resent(fresh_server: TestServer) -> None:
    """A POST whose kept-alive connection closes under it may have reached the server: it is not sent again."""
    post = json.dumps({"url": fresh_server.url("/close-once/b"), "method": "POST", "body": "x"})
    records = await collect([fresh_server.url("/ok"), post], concurrency=1, retries=2)
    second = max(records, key=lambda r: r.index)
    assert second.error is not None
    assert second.error.kind is ErrorKind.PROTOCOL
    assert second.attempts == 1
    assert fresh_server.hits("/close-once/b") == 1


async def test_head_has_a_status_and_no_body_and_keeps_the_connection(fresh_server: TestServer) -> None:
    """A HEAD answer has its status and no body (despite its Content-Length), and its connection is reused."""
    head = json.dumps({"url": fresh_server.url("/resource/5000"), "method": "HEAD"})
    records = sorted(
        await collect([head, fresh_server.url("/resource/5000"), head], concurrency=1, retries=0),
        key=lambda r: r.index,
    )
    assert [(r.method, r.status, r.size, r.error) for r in records] == [
        ("HEAD", 200, 0, None),
        ("GET", 200, 5000, None),
        ("HEAD", 200, 0, None),
    ]
    assert records[0].sha256 == hashlib.sha256(b"").hexdigest()
    assert fresh_server.stats.connections == 1


async def test_a_chunked_body_is_read_whole(server: TestServer) -> None:
    """A chunked response is reassembled: size and digest are those of the payload."""
    [record] = await collect([server.url("/chunked/25000")])
    assert record.error is None
    assert record.size == 25_000
    assert record.sha256 == hashlib.sha256(_pattern(25_000)).hexdigest()


async def test_a_body_delimited_by_close_is_read_whole(server: TestServer) -> None:
    """A response without Content-Length or chunking ends when the server closes, and is complete."""
    [record] = await collect([server.url("/no-length/25000")])
    assert record.error is None
    assert record.size == 25_000
    assert record.sha256 == hashlib.sha256(_pattern(25_000)).hexdigest()


async def test_a_large_body_survives_flow_control(server: TestServer) -> None:
    """A body many times the read buffer arrives complete and in order."""
    [record] = await collect([server.url("/bytes/5000000")])
    assert record.error is None
    assert record.size == 5_000_000
    assert record.sha256 == hashlib.sha256(_pattern(5_000_000)).hexdigest()


async def test_many_urls_on_a_dead_domain_all_get_dns_records() -> None:
    """Every request to a name that does not resolve gets its own dns record."""
    records = await collect([f"http://dead.invalid/{i}" for i in range(20)], retries=0, concurrency=5)
    assert len(records) == 20
    assert {r.error.kind if r.error else None for r in records} == {ErrorKind.DNS}


async def test_the_pool_speaks_httpx_transport_protocol(server: TestServer) -> None:
    """ConnectionPool works as a plain httpx transport, raising httpx's exceptions."""
    async with httpx.AsyncClient(transport=ConnectionPool()) as client:
        response = await client.get(server.url("/ok"))
        assert response.status_code == 200
        assert response.text == "ok\n"
        assert response.http_version == "HTTP/1.1"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url("/close"))


async def test_more_requests_in_flight_than_max_connections_do_not_crash_the_pool(server: TestServer) -> None:
    """A pool asked for more concurrent requests than max_connections still answers them all."""
    async with httpx.AsyncClient(transport=ConnectionPool(max_connections=2)) as client:
        responses = await asyncio.gather(*[client.get(server.url("/sleep/100")) for _ in range(5)])
    assert [r.status_code for r in responses] == [200] * 5


# -- limits a hostile server cannot get past ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/headers-forever?size=1000", f"response head larger than {MAX_HEAD_BYTES} bytes"),
        ("/endless-header", f"response head larger than {MAX_HEAD_BYTES} bytes"),
        ("/headers-forever?size=20", f"more than {MAX_HEADERS} response headers"),
        ("/interim-flood", f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"),
    ],
)
async def test_a_response_head_that_never_ends_is_protocol_at_the_bound(
    server: TestServer, path: str, reason: str
) -> None:
    """Headers sent forever (many, one endless, or 1xx after 1xx) end in protocol at a bound, not at the deadline."""
    [record] = await collect([server.url(path)], retries=0, timeout=60)
    assert record.error is not None
    assert (record.error.kind, record.error.message) == (ErrorKind.PROTOCOL, reason)
    assert record.status is None


@pytest.mark.parametrize(
    "line",
    ["HTTP/1.1 abc OK", "HTTP/1.1 20 OK", "HTTP/1.1 999 Nope", "HTTP/1.1 099 Nope", "HTTP/2.0 200 OK", "ICY 200 OK"],
)
async def test_a_garbled_status_line_is_protocol(server: TestServer, line: str) -> None:
    """A status line with no valid code (outside 100..599) or no HTTP/1.x version is a protocol error."""
    [record] = await collect([server.url("/status-line?" + urlencode({"line": line}))], retries=0)
    assert record.error is not None
    assert record.error.kind is ErrorKind.PROTOCOL
    assert record.status is None


@pytest.mark.parametrize("extra", [None, "JUNK", "\r\nHTTP/1.1 200 OK\r\n"])
async def test_a_body_longer_than_its_content_length_is_cut_and_its_connection_dropped(
    fresh_server: TestServer, extra: str | None
) -> None:
    """Bytes past Content-Length are not body, and the connection they came on is never reused."""
    query = "" if extra is None else "?" + urlencode({"extra": extra})
    records = await collect([fresh_server.url(f"/overlong/10{query}"), fresh_server.url("/ok")], concurrency=1)
    first, second = sorted(records, key=lambda r: r.index)
    assert (first.error, first.size) == (None, 10)
    assert first.sha256 == hashlib.sha256(_pattern(10)).hexdigest()
    assert (second.error, second.sha256) == (None, hashlib.sha256(b"ok\n").hexdigest())
    assert fresh_server.stats.connections == 2


@pytest.mark.parametrize("later", [None, 0.05])
async def test_a_fake_response_after_the_body_is_not_the_next_answer(
    fresh_server: TestServer, later: float | None
) -> None:
    """A response sent after the first (at once, or while the connection idles) never answers the next request."""
    async with httpx.AsyncClient(transport=ConnectionPool()) as client:
        first = await client.get(fresh_server.url("/overlong/5" + ("" if later is None else f"?later={later}")))
        if later is not None:
            # Waiting without running the loop: the extra bytes sit unread in the socket, as when
            # the next request is sent before the loop has looked at the connection again.
            _block_until(lambda: fresh_server.stats.counters["overlong-extra-sent"] == 1)
        second = await client.get(fresh_server.url("/ok"))
    assert first.content == _pattern(5)
    assert second.content == b"ok\n"
    assert fresh_server.stats.connections == 2


def _block_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Return once ``condition()`` holds, without yielding to the event loop; raise TimeoutError after ``timeout`` s."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


async def test_a_request_that_cannot_be_written_leaves_its_kept_connection_in_the_pool(
    fresh_server: TestServer,
) -> None:
    """A header that would split the message is refused before a byte is sent; the idle connection
    the pool had given that request goes back, and the next request reuses it."""
    async with httpx.AsyncClient(transport=ConnectionPool()) as client:
        pool = client._transport
        assert isinstance(pool, ConnectionPool)
        first = await client.get(fresh_server.url("/ok"))
        with pytest.raises(httpx.LocalProtocolError, match="line break"):
            await client.get(fresh_server.url("/ok"), headers={"X-Split": "a\r\nInjected: 1"})
        assert pool.open_connections == 1
        second = await client.get(fresh_server.url("/ok"))
    assert (first.status_code, second.status_code) == (200, 200)
    assert pool.connections_reused == 1
    assert fresh_server.stats.connections == 1
