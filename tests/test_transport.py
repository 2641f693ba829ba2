"""Our HTTP/1.1 pool: keep-alive reuse, stale connections, real concurrency, body framings."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest

from asyncfetch.errors import ErrorKind
from asyncfetch.transport import ConnectionPool
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
