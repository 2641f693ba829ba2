"""Our HTTP/2 against stock servers: nginx's GOAWAY after keepalive_requests and after its idle timeout
lose nothing, and lighttpd (which follows the client's ALPN order) speaks h2 because we offer it first.

The faults nginx cannot be made to commit (REFUSED_STREAM, a GOAWAY naming an earlier stream) are on our
own HTTP/2 server, in tests/test_http2.py.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import collect
from tests.interop.conftest import StartNginx, WebServer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("trust_ca")]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_nginx_past_keepalive_requests_loses_nothing(nginx_h2: WebServer, method: str) -> None:
    """1,200 requests with retries 0 against stock nginx, which sends GOAWAY after 1,000 streams: all answered."""
    urls = [nginx_h2.url(f"/method?i={i}") for i in range(1200)]
    records = await collect(urls, http2=True, retries=0, concurrency=50, method=method, data=b"x" * 100)
    assert Counter((r.status, r.http_version, r.error) for r in records) == {(200, "HTTP/2", None): 1200}
    assert {r.attempts for r in records} == {1}


async def test_nginx_across_its_idle_timeout_loses_nothing(start_nginx: StartNginx) -> None:
    """Requests spaced wider than a 1 s keepalive_timeout (nginx's GOAWAY, then close) all succeed, POST too."""
    server = start_nginx(http2=True, keepalive_timeout="1s")
    urls = [server.url(f"/method?i={i}") for i in range(4)]
    records = await collect(urls, http2=True, retries=0, rate=0.7, method="POST", data=b"x")
    assert [(r.status, r.http_version, r.error) for r in records] == [(200, "HTTP/2", None)] * 4


async def test_lighttpd_speaks_http2_when_h2_is_offered_first(lighttpd_h2: WebServer) -> None:
    """ALPN offers h2 before http/1.1, so lighttpd, which takes the client's first choice, speaks HTTP/2."""
    file = lighttpd_h2.tree["/100k.bin"]
    [with_h2] = await collect([lighttpd_h2.url(file.path)], http2=True)
    [without] = await collect([lighttpd_h2.url(file.path)])
    assert (with_h2.status, with_h2.http_version, with_h2.sha256) == (200, "HTTP/2", file.sha256)
    assert (without.status, without.http_version, without.sha256) == (200, "HTTP/1.1", file.sha256)
