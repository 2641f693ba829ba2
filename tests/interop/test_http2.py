"""http2=True against real HTTP/2 servers: h2 negotiated, every file as on disk.

The HTTP/2 path itself (GOAWAY past keepalive_requests, idle timeouts) is tested by the HTTP/2 work of
issue 10 on these same fixtures; here only what every h2 server must give.
"""

from __future__ import annotations

import pytest

from tests.conftest import collect
from tests.interop.conftest import WebServer

pytestmark = pytest.mark.anyio

H2_SERVERS = [
    "nginx_h2",
    "apache2_tls",
    "caddy_tls",
    "h2o_tls",
    "lighttpd_h2",  # it takes the client's first ALPN choice: h2, since we offer it first
]


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("name", H2_SERVERS)
async def test_http2_is_negotiated_and_every_file_arrives_whole(name: str, request: pytest.FixtureRequest) -> None:
    """With http2=True each h2 server answers over HTTP/2, and every file is as on disk."""
    server: WebServer = request.getfixturevalue(name)
    urls = [server.url(path) for path in server.tree.files]
    records = {r.url: r for r in await collect(urls, http2=True, concurrency=4)}
    for path, expected in server.tree.files.items():
        record = records[server.url(path)]
        assert record.error is None, (path, record.error)
        assert record.http_version == "HTTP/2", path
        assert (record.status, record.size, record.sha256) == (200, expected.size, expected.sha256), path
