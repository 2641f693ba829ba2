"""TLS sessions resumed by the next connection to a host, and by other hosts its server's certificate covers.

The rules (which name a certificate covers, which session is offered) are checked on
:class:`SessionCache` directly; resumption itself against a real local TLS server (OpenSSL on
both sides) that presents one certificate or another by the name asked for.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trustme

from asyncfetch.http import Origin
from asyncfetch.tlssession import SHARED_REFRESH, SessionCache, covers, dns_names
from asyncfetch.transport import ConnectionPool
from tests.conftest import TableResolver
from tests.server import TestServer

pytestmark = pytest.mark.anyio


# -- which names a certificate covers -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("shop.example.com", True),  # listed as is
        ("SHOP.Example.com.", True),  # case and a trailing dot do not matter
        ("a.cdn.example.com", True),  # *.cdn.example.com: one label
        ("a.b.cdn.example.com", False),  # a wildcard is one label, not several
        ("cdn.example.com", False),  # nor none
        ("example.com", False),
        ("other.com", False),
    ],
)
def test_a_certificate_covers_its_names_and_one_label_under_a_wildcard(host: str, expected: bool) -> None:
    names = frozenset({"shop.example.com", "*.cdn.example.com"})
    assert covers(names, host) is expected


def test_a_wildcard_on_a_top_level_domain_covers_nothing() -> None:
    assert not covers(frozenset({"*.com"}), "example.com")


def test_dns_names_are_the_certificates_dns_alt_names_only() -> None:
    certificate = {"subjectAltName": (("DNS", "A.example"), ("IP Address", "127.0.0.1"), ("DNS", "*.b.example"))}
    assert dns_names(certificate) == {"a.example", "*.b.example"}
    assert dns_names({}) == frozenset()  # what getpeercert() gives when nothing was verified


# -- which session is offered ------------------------------------------------------------------------
class _FakeTLS:
    """What SessionCache reads of an ssl.SSLObject whose response is complete."""

    def __init__(self, session: object, names: tuple[str, ...], version: str = "TLSv1.3") -> None:
        self.session = session
        self._names = names
        self._version = version

    def version(self) -> str:
        return self._version

    def getpeercert(self) -> dict[str, Any]:
        return {"subjectAltName": tuple(("DNS", name) for name in self._names)}


class _FakeSession:
    has_ticket = True


def _origin(host: str) -> Origin:
    return Origin("https", host, 443)


def _keep(cache: SessionCache, tls: _FakeTLS, host: str, *, for_origin: bool = False) -> None:
    cache.keep(tls, _origin(host), ("10.0.0.1", 443), for_origin=for_origin)  # type: ignore[arg-type]


def test_a_session_is_offered_to_another_host_at_its_address_that_the_certificate_covers() -> None:
    cache = SessionCache(share=True)
    session: Any = _FakeSession()
    _keep(cache, _FakeTLS(session, ("*.example.com",)), "a.example.com")
    assert cache.offer(_origin("b.example.com"), "10.0.0.1") == (session, True)
    assert cache.offer(_origin("b.example.com"), "10.0.0.2") == (None, False)  # another address
    assert cache.offer(_origin("b.other.com"), "10.0.0.1") == (None, False)  # a name not covered


def test_a_hosts_own_session_comes_before_its_addresses() -> None:
    cache = SessionCache(share=True)
    shared, own = _FakeSession(), cast(Any, _FakeSession())
    _keep(cache, _FakeTLS(shared, ("*.example.com",)), "a.example.com")
    _keep(cache, _FakeTLS(own, ("*.example.com",)), "b.example.com", for_origin=True)
    assert cache.offer(_origin("b.example.com"), "10.0.0.1") == (own, False)


def test_nothing_is_shared_when_unverified_over_tls_1_2_or_without_a_ticket() -> None:
    unverified = SessionCache(share=False)
    _keep(unverified, _FakeTLS(_FakeSession(), ("*.example.com",)), "a.example.com")
    assert unverified.offer(_origin("b.example.com"), "10.0.0.1") == (None, False)
    cache = SessionCache(share=True)
    _keep(cache, _FakeTLS(_FakeSession(), ("*.example.com",), version="TLSv1.2"), "a.example.com")
    no_ticket = _FakeSession()
    no_ticket.has_ticket = False
    _keep(cache, _FakeTLS(no_ticket, ("*.example.com",)), "a.example.com")
    assert cache.offer(_origin("b.example.com"), "10.0.0.1") == (None, False)


def test_a_refused_address_session_is_forgotten_and_one_is_taken_again_after_a_while() -> None:
    now = [0.0]
    cache = SessionCache(share=True, clock=lambda: now[0])
    first, second = _FakeSession(), cast(Any, _FakeSession())
    assert cache.wants(("10.0.0.1", 443), for_origin=False)
    _keep(cache, _FakeTLS(first, ("*.example.com",)), "a.example.com")
    assert not cache.wants(("10.0.0.1", 443), for_origin=False)  # one is enough
    assert cache.wants(("10.0.0.1", 443), for_origin=True)  # the host's own is still wanted
    now[0] = SHARED_REFRESH + 1
    assert cache.wants(("10.0.0.1", 443), for_origin=False)  # ...and a fresher one after a while
    cache.refused("10.0.0.1", 443)
    assert cache.offer(_origin("b.example.com"), "10.0.0.1") == (None, False)
    _keep(cache, _FakeTLS(second, ("*.example.com",)), "c.example.com")
    assert cache.offer(_origin("b.example.com"), "10.0.0.1") == (second, True)


# -- against a real TLS server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def named_tls_server(certificate_authority: trustme.CA) -> Iterator[TestServer]:
    """An HTTPS server on 127.0.0.1 with a certificate for ``*.shared.test``, and another for ``other.test``."""
    shared = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("*.shared.test").configure_cert(shared)
    other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("other.test").configure_cert(other)

    def choose(tls: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name == "other.test":
            tls.context = other

    shared.sni_callback = choose
    running = TestServer(ssl_context=shared).start()
    yield running
    running.stop()


async def _resumed(server: TestServer, hosts: list[str], *, verify: bool = True) -> tuple[int, int]:
    """Connections opened and TLS sessions resumed for one request to each host in turn (all answered 200)."""
    pool = ConnectionPool(resolver=TableResolver({host: ["127.0.0.1"] for host in hosts}), verify=verify)
    try:
        async with httpx.AsyncClient(transport=pool) as client:
            for host in hosts:
                assert (await client.get(f"https://{host}:{server.port}/ok")).status_code == 200
    finally:
        await pool.aclose()
    return pool.connections_opened, pool.tls_resumed


async def test_a_host_covered_by_a_servers_certificate_resumes_that_servers_session(
    named_tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b. and c.shared.test, at the address that showed a ``*.shared.test`` certificate, resume its session."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    hosts = ["a.shared.test", "b.shared.test", "c.shared.test"]
    assert await _resumed(named_tls_server, hosts) == (3, 2)


async def test_a_host_the_certificate_does_not_cover_gets_a_full_verified_handshake(
    named_tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """other.test at the same address is not offered the ``*.shared.test`` session: its own certificate is verified."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert await _resumed(named_tls_server, ["a.shared.test", "other.test"]) == (2, 0)


async def test_with_verification_off_no_session_is_shared(
    named_tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With -k no certificate was checked, so no name is known to be covered: each host gets a full handshake."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert await _resumed(named_tls_server, ["a.shared.test", "b.shared.test"], verify=False) == (2, 0)
