"""HTTP/2 negotiated only when asked for, and proxied requests handed to httpx's transport."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import collect, records_of, run_cli
from tests.hypercorn_server import serving
from tests.server import TestServer

pytestmark = pytest.mark.anyio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _version_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request with the HTTP version it arrived over."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["http_version"].encode()})


@pytest.fixture(scope="module")
def h2_server(certificate_authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An HTTPS server (hypercorn) that speaks HTTP/2 to clients that offer it; yields its base URL."""
    with serving(_version_app, certificate_authority, tmp_path_factory.mktemp("h2")) as url:
        yield url


async def test_http2_is_negotiated_with_a_server_that_offers_it(h2_server: str, ca_file: Path) -> None:
    """With http2=True an HTTPS request goes out over HTTP/2 and the record says so."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(ca_file))
        [record] = await collect([h2_server + "/x"], http2=True, include_body=True)
    assert record.error is None, record.error
    assert record.http_version == "HTTP/2"
    assert record.body == "2"


async def test_an_http2_response_has_its_remote_address_and_tls_facts(h2_server: str, ca_file: Path) -> None:
    """Responses through httpx's HTTP/2 transport name their peer and, with tls, their h2 ALPN."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(ca_file))
        [record] = await collect([h2_server + "/x"], http2=True, tls=True, timings=True)
    assert record.http_version == "HTTP/2"
    assert record.remote_ip == "127.0.0.1"
    assert record.remote_port == int(h2_server.rsplit(":", 1)[1])
    assert record.tls["alpn"] == "h2"
    assert record.timings is not None
    assert record.timings.total == record.elapsed_ms


async def test_without_http2_the_same_server_is_spoken_to_in_http_1_1(h2_server: str, ca_file: Path) -> None:
    """Without http2, HTTPS requests use HTTP/1.1 even when the server could do HTTP/2."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(ca_file))
        [record] = await collect([h2_server + "/x"], include_body=True)
    assert record.http_version == "HTTP/1.1"
    assert record.body == "1.1"


async def test_an_explicit_proxy_receives_the_request_in_absolute_form(
    fresh_server: TestServer, server: TestServer
) -> None:
    """With proxy=URL a plain-HTTP request is sent to the proxy, naming the full target URL."""
    target = server.url("/ok")
    [record] = await collect([target], proxy=fresh_server.base)
    assert record.status == 200
    assert [seen.path for seen in fresh_server.stats.requests] == [target]


def test_the_http_proxy_variable_is_honoured_and_no_proxy_bypasses_it(
    fresh_server: TestServer, server: TestServer
) -> None:
    """HTTP_PROXY routes plain-HTTP requests through the proxy unless NO_PROXY names the host."""
    target = server.url("/ok")
    proxied = run_cli("-q", input=target + "\n", env={"HTTP_PROXY": fresh_server.base, "NO_PROXY": ""})
    assert proxied.returncode == 0, proxied.stderr
    assert [seen.path for seen in fresh_server.stats.requests] == [target]
    bypassed = run_cli("-q", input=target + "\n", env={"HTTP_PROXY": fresh_server.base, "NO_PROXY": "127.0.0.1"})
    assert bypassed.returncode == 0, bypassed.stderr
    assert records_of(bypassed.stdout)[0]["status"] == 200
    assert len(fresh_server.stats.requests) == 1  # the second run went direct
