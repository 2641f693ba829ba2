"""The connection policy across many hosts: keep what queued requests need, within the open-file
bound; the resolver asks only for usable addresses; happy eyeballs past a blackholed address.

Hosts are 127.0.0.1 ... 127.0.0.N, one local server listening on each (all of 127.0.0.0/8 is
loopback on Linux), so every origin is distinct and every connection is real.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

import asyncfetch
from asyncfetch import transport as transport_module
from asyncfetch.http import Origin
from asyncfetch.transport import ConnectionPool, Resolver, connection_budget
from tests.conftest import TableResolver, collect
from tests.server import TestServer, _pattern

pytestmark = pytest.mark.anyio

HOSTS = 40


@pytest.fixture
def many_hosts() -> Iterator[TestServer]:
    """One server of this test's own answering as HOSTS hosts (127.0.0.1 and aliases)."""
    running = TestServer(aliases=HOSTS - 1).start()
    yield running
    running.stop()


class _CountingPool(ConnectionPool):
    """A pool that notes how many connections it holds each time it opens one."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.open_when_connecting: list[int] = []

    async def _attempt(self, origin: Origin, family: int, address: str, context: Any, *timing: Any) -> Any:
        self.open_when_connecting.append(self.open_connections)
        return await super()._attempt(origin, family, address, context, *timing)


async def _fetch_through(pool: ConnectionPool, urls: list[str], **options: Any) -> list[asyncfetch.Record]:
    """Every record of a fetch over ``pool`` (closed afterwards) without retries, in completion order."""
    try:
        return [r async for r in asyncfetch.fetch(urls, transport=pool, retries=0, **options)]
    finally:
        await pool.aclose()


async def test_connections_to_many_hosts_are_kept_for_their_next_requests(many_hosts: TestServer) -> None:
    """Five rounds over 40 hosts with 8 in flight open one connection per host, not one per request."""
    urls = [f"{host}/ok" for _ in range(5) for host in many_hosts.hosts()]
    run = asyncfetch.fetch(urls, concurrency=8, per_host=1, retries=0)
    records = [record async for record in run]
    assert [r.status for r in records] == [200] * len(urls)
    assert many_hosts.stats.connections == HOSTS
    assert all(many_hosts.connections_to(f"127.0.0.{n}") == 1 for n in range(1, HOSTS + 1))
    assert (run.connections_opened, run.connections_reused) == (HOSTS, 4 * HOSTS)


async def test_a_hosts_requests_follow_one_another_on_its_connection(many_hosts: TestServer) -> None:
    """Three rounds over 40 hosts with one worker and room for 2 idle connections: one connection per host.

    Taken round-robin, each host's connection would have been closed (40 idle needed) before
    its next request; taken host after host, each request finds the one its predecessor left.
    """
    pool = ConnectionPool(max_idle=2)
    urls = [f"{host}/ok" for _ in range(3) for host in many_hosts.hosts()]
    records = await _fetch_through(pool, urls, concurrency=1)
    assert [r.status for r in records] == [200] * len(urls)
    assert many_hosts.stats.connections == HOSTS
    assert (pool.connections_opened, pool.connections_reused) == (HOSTS, 2 * HOSTS)


async def test_the_pool_never_holds_more_connections_than_its_bound(many_hosts: TestServer) -> None:
    """With room for 4 connections and 40 hosts, idle ones are closed to stay within 4, and all requests succeed."""
    pool = _CountingPool(max_connections=4)
    urls = [f"{host}/bytes/1000" for _ in range(3) for host in many_hosts.hosts()]
    records = await _fetch_through(pool, urls, concurrency=4)
    assert [r.status for r in records] == [200] * len(urls)
    assert many_hosts.stats.connections > 4  # it had to close and reopen
    assert len(pool.open_when_connecting) == pool.connections_opened
    assert max(pool.open_when_connecting) <= 4


async def test_eviction_spares_a_host_with_requests_queued(many_hosts: TestServer) -> None:
    """Room is made by closing an idle connection no queued request needs, before an older one that is needed."""
    a, b, c, d = (f"127.0.0.{n}" for n in range(1, 5))
    queued = {a: 1}
    pool = ConnectionPool(max_connections=3, demand=lambda origin: queued.get(origin.host, 0))
    async with httpx.AsyncClient(transport=pool) as client:
        for address in (a, b, c, d, a, b):
            response = await client.get(f"http://{address}:{many_hosts.port}/ok")
            assert response.status_code == 200
    assert many_hosts.connections_to(a) == 1  # oldest, but queued for: kept and reused
    assert many_hosts.connections_to(b) == 2  # nothing queued: closed to make room for d
    assert many_hosts.connections_to(c) == 1


async def test_without_demand_eviction_takes_the_oldest(many_hosts: TestServer) -> None:
    """With no queue to ask, the idle connection closed to make room is the one idle longest."""
    a, b, c, d = (f"127.0.0.{n}" for n in range(1, 5))
    pool = ConnectionPool(max_connections=3)
    async with httpx.AsyncClient(transport=pool) as client:
        for address in (a, b, c, d, a):
            response = await client.get(f"http://{address}:{many_hosts.port}/ok")
            assert response.status_code == 200
    assert many_hosts.connections_to(a) == 2
    assert many_hosts.connections_to(b) == 1


async def test_idle_connections_beyond_the_memory_bound_are_closed(many_hosts: TestServer) -> None:
    """max_idle caps the connections kept idle, whatever room the open-file bound leaves."""
    pool = ConnectionPool(max_idle=2)
    async with httpx.AsyncClient(transport=pool) as client:
        for host in many_hosts.hosts()[:5]:
            assert (await client.get(f"{host}/ok")).status_code == 200
        assert pool.open_connections == 2
        for host in many_hosts.hosts()[3:5]:  # the two most recent are the ones kept
            assert (await client.get(f"{host}/ok")).status_code == 200
    assert pool.connections_opened == 5
    assert pool.connections_reused == 2


async def test_beyond_a_few_idle_connections_only_hosts_with_requests_queued_keep_theirs(
    many_hosts: TestServer,
) -> None:
    """Past speculative_idle idle connections, one to a host with nothing queued is closed; a queued one is kept."""
    hosts = many_hosts.hosts()[:4]
    queued = {"127.0.0.4": 1}
    pool = ConnectionPool(speculative_idle=2, demand=lambda origin: queued.get(origin.host, 0))
    async with httpx.AsyncClient(transport=pool) as client:
        for host in hosts:
            assert (await client.get(f"{host}/ok")).status_code == 200
        assert pool.open_connections == 3  # the first two, and the one with a request queued
        assert (await client.get(f"{hosts[3]}/ok")).status_code == 200
    assert pool.connections_reused == 1


def test_the_connection_budget_is_the_open_file_limit_less_a_reserve() -> None:
    """The pool's default bound follows ulimit -n, keeping a reserve of descriptors for everything else."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit to follow")
    assert connection_budget(reserve=64) == max(16, soft - 64)
    assert ConnectionPool().max_connections == connection_budget()


# -- TLS ----------------------------------------------------------------------------------------------


async def test_a_tls_server_closing_an_idle_connection_cleanly_is_not_an_error(
    tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a TLS server ends a kept-alive connection with close_notify, the next request to it succeeds first time."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    items = [tls_server.url("/bye"), tls_server.url("/ok")] * 3
    # A TLS layer spinning on the closed stream never returns: the per-test timeout fails it.
    async with asyncio.timeout(30):
        records = await collect(items, concurrency=1, retries=0, timeout=10)
    assert [(r.status, r.error) for r in records] == [(200, None)] * 6


async def test_a_second_connection_to_a_tls_host_resumes_its_session(
    tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests at once to a host already met open a second connection that resumes the first one's TLS session."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    pool = ConnectionPool()
    try:
        async with httpx.AsyncClient(transport=pool) as client:
            assert (await client.get(tls_server.url("/ok"))).status_code == 200
            both = await asyncio.gather(
                client.get(tls_server.url("/sleep/100")), client.get(tls_server.url("/sleep/100"))
            )
    finally:
        await pool.aclose()
    assert [r.status_code for r in both] == [200, 200]
    assert pool.connections_opened == 2
    assert pool.tls_resumed == 1


class _WriteCounter:
    """Stands for a connection's transport, noting what each write carries."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_a_new_tls_connection_sends_its_finished_message_with_the_request(
    tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new TLS 1.3 connection writes twice before its response: the ClientHello, then its Finished and the request."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    writes: list[bytes] = []
    made = transport_module._Connection.connection_made

    def counted(self: Any, transport: Any) -> None:
        made(self, cast(asyncio.BaseTransport, _WriteCounter(transport, writes)))

    monkeypatch.setattr(transport_module._Connection, "connection_made", counted)
    pool = ConnectionPool()
    try:
        async with httpx.AsyncClient(transport=pool) as client:
            response = await client.get(tls_server.url("/ok"))
            assert response.status_code == 200
            ssl_object = response.extensions[transport_module.SSL_OBJECT]
            assert ssl_object.version() == "TLSv1.3"
    finally:
        await pool.aclose()
    assert len(writes) == 2, [len(data) for data in writes]
    assert writes[0][0] == 0x16  # a TLS handshake record: the ClientHello
    assert len(writes[1]) > 2 * 22  # Finished (a record of its own) and the request's record after it


async def test_a_large_body_over_tls_arrives_whole(
    tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body of many TLS records, read through the pool's own TLS layer, has the server's bytes."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    [record] = await collect([tls_server.url("/bytes/3000000")], retries=0)
    assert record.error is None
    assert record.size == 3_000_000
    assert record.sha256 == hashlib.sha256(_pattern(3_000_000)).hexdigest()


# -- happy eyeballs ----------------------------------------------------------------------------------


@pytest.fixture
def blackhole(fresh_server: TestServer) -> Iterator[str]:
    """127.0.0.2 on the server's port, swallowing every SYN: a listener whose accept queue is full.

    Linux drops a SYN (no reset, no answer) when the listener's accept queue is full: with a
    backlog of 0 one unaccepted connection fills it, and every later connect hangs as it would
    towards an address whose packets vanish. No firewall rule, no traffic off the machine.
    """
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.2", fresh_server.port))
        listener.listen(0)
        filler.connect(("127.0.0.2", fresh_server.port))
        yield "127.0.0.2"
    finally:
        filler.close()
        listener.close()


async def test_a_host_whose_first_address_swallows_packets_is_reached_on_its_second(
    fresh_server: TestServer, blackhole: str
) -> None:
    """A name resolving to a blackholed address, then a live one, is fetched well within the connect deadline."""
    resolver = TableResolver({"two-addresses.test": [blackhole, "127.0.0.1"]})
    pool = ConnectionPool(connect_timeout=30, resolver=resolver)
    async with asyncio.timeout(20):  # far below the connect deadline: only the second address can answer
        [record] = await _fetch_through(pool, [f"http://two-addresses.test:{fresh_server.port}/ok"])
    assert record.status == 200
    assert fresh_server.connections_to("127.0.0.1") == 1
    assert pool.connections_opened == 1


async def test_a_refused_first_address_falls_through_to_the_next_at_once(fresh_server: TestServer) -> None:
    """An address that refuses (nothing listens) does not end the attempt while another address is left."""
    resolver = TableResolver({"refused-first.test": ["127.0.0.3", "127.0.0.1"]})
    pool = ConnectionPool(resolver=resolver, happy_eyeballs_delay=30)
    async with asyncio.timeout(20):  # below the delay: the refusal itself must start the next attempt
        [record] = await _fetch_through(pool, [f"http://refused-first.test:{fresh_server.port}/ok"])
    assert record.status == 200


async def test_every_address_failing_is_one_connect_error() -> None:
    """When no address of a host accepts, the record's error is connect, naming the host."""
    from tests.conftest import unused_port

    port = unused_port()
    resolver = TableResolver({"all-dead.test": ["127.0.0.3", "127.0.0.4"]})
    pool = ConnectionPool(resolver=resolver)
    try:
        [record] = [r async for r in asyncfetch.fetch([f"http://all-dead.test:{port}/"], transport=pool, retries=0)]
    finally:
        await pool.aclose()
    assert record.error is not None
    assert record.error.kind.value == "connect"
    assert "all-dead.test" in record.error.message


# -- the resolver ------------------------------------------------------------------------------------


class _ScriptedLookups:
    """Stands in for the system resolver: records each query's family, answers from a script."""

    def __init__(self, answers: list[Any]) -> None:
        self.families: list[int] = []
        self._answers = answers

    async def __call__(self, host: str, port: int, family: int) -> Any:
        self.families.append(family)
        answer = self._answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _answer(family: int, address: str) -> list[Any]:
    return [(family, socket.SOCK_STREAM, 6, "", (address, 80))]


async def test_without_an_ipv6_route_only_ipv4_addresses_are_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """No IPv6 route: one A query per name (family AF_INET, AI_ADDRCONFIG), not A and AAAA."""
    lookups = _ScriptedLookups([_answer(socket.AF_INET, "127.0.0.1")])
    monkeypatch.setattr("asyncfetch.transport._lookup_family", lambda: socket.AF_INET)
    monkeypatch.setattr("asyncfetch.transport._getaddrinfo", lookups)
    assert await Resolver().resolve("example.test", 80) == [(socket.AF_INET, "127.0.0.1")]
    assert lookups.families == [socket.AF_INET]


async def test_a_name_with_no_ipv4_address_is_asked_again_for_any_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that exists without an A record (EAI_NODATA) gets a second lookup open to IPv6."""
    nodata = socket.gaierror(socket.EAI_NODATA, "No address associated with hostname")
    lookups = _ScriptedLookups([nodata, _answer(socket.AF_INET6, "::1")])
    monkeypatch.setattr("asyncfetch.transport._lookup_family", lambda: socket.AF_INET)
    monkeypatch.setattr("asyncfetch.transport._getaddrinfo", lookups)
    assert await Resolver().resolve("v6only.test", 80) == [(socket.AF_INET6, "::1")]
    assert lookups.families == [socket.AF_INET, socket.AF_UNSPEC]


async def test_the_system_resolver_is_asked_only_for_addresses_this_host_can_use() -> None:
    """A real lookup of localhost goes through getaddrinfo with AI_ADDRCONFIG and answers a loopback address."""
    addresses = await Resolver().resolve("localhost", 80)
    assert addresses
    assert all(address in ("127.0.0.1", "::1") for _, address in addresses)


async def test_a_dead_name_is_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """NXDOMAIN is not retried for IPv6, and later requests for the name are answered from the failure cache."""
    nxdomain = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    lookups = _ScriptedLookups([nxdomain])
    monkeypatch.setattr("asyncfetch.transport._lookup_family", lambda: socket.AF_INET)
    monkeypatch.setattr("asyncfetch.transport._getaddrinfo", lookups)
    resolver = Resolver()
    for _ in range(3):
        with pytest.raises(socket.gaierror):
            await resolver.resolve("dead.test", 80)
    assert lookups.families == [socket.AF_INET]
