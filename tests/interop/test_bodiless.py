"""Answers whose framing is not "read Content-Length bytes": HEAD, 304, ranges, HTTP/1.0.

Each request alternates with a plain GET on the same kept-alive connection (concurrency 1), so an answer
read with the wrong framing shows up as a broken or shifted answer to the GET after it.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import collect
from tests.interop.conftest import WebServer

pytestmark = pytest.mark.anyio

SERVERS = [
    "nginx",
    "nginx_tls",
    "apache2",
    "apache2_tls",
    "lighttpd",
    "lighttpd_h2",
    "caddy_tls",
    "h2o",
    "h2o_tls",
    "node_server",
    "python_http_server",
]


@pytest.fixture(params=SERVERS)
def web_server(request: pytest.FixtureRequest) -> WebServer:
    server: WebServer = request.getfixturevalue(request.param)
    return server


@pytest.mark.usefixtures("trust_ca")
async def test_head_gets_no_body_though_the_length_says_10_mb(web_server: WebServer) -> None:
    """HEAD of the 10 MB file: status 200, size 0, at once; the GET after it on the same connection is whole."""
    big, small = web_server.tree["/10m.bin"], web_server.tree["/1k.bin"]
    requests = [{"url": web_server.url(big.path), "method": "HEAD"}, web_server.url(small.path)] * 3
    records = await collect(requests, concurrency=1, include_headers=True, retries=0)
    heads = [r for r in records if r.method == "HEAD"]
    gets = [r for r in records if r.method == "GET"]
    for head in heads:
        assert (head.status, head.size, head.error) == (200, 0, None)
        assert head.headers is not None
        if "content-length" in head.headers:  # a HEAD may announce the length of the GET
            assert int(head.headers["content-length"]) == big.size
    assert [(r.status, r.sha256) for r in gets] == [(200, small.sha256)] * 3


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("name", [name for name in SERVERS if name not in ("node_server", "python_http_server")])
async def test_a_byte_range_is_answered_with_206_and_those_bytes(name: str, request: pytest.FixtureRequest) -> None:
    """Range: bytes=1000-1999 of the 100 KB file: 206 and exactly those 1,000 bytes; the next GET is whole."""
    web_server: WebServer = request.getfixturevalue(name)
    file = web_server.tree["/100k.bin"]
    part = web_server.tree.on_disk(file.path)[1000:2000]
    ranged = {"url": web_server.url(file.path), "headers": {"Range": "bytes=1000-1999"}}
    records = await collect([ranged, web_server.url(file.path)] * 2, concurrency=1, retries=0)
    partial = [r for r in records if r.status == 206]
    whole = [r for r in records if r.status == 200]
    assert [(r.size, r.sha256) for r in partial] == [(1000, hashlib.sha256(part).hexdigest())] * 2
    assert [(r.size, r.sha256) for r in whole] == [(file.size, file.sha256)] * 2


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("name", ["nginx", "nginx_tls", "apache2", "lighttpd", "caddy_tls", "h2o"])
async def test_not_modified_has_no_body_and_the_connection_stays_in_step(
    name: str, request: pytest.FixtureRequest
) -> None:
    """If-None-Match with the file's own ETag: 304, size 0, ok; the GET after it on the connection is whole."""
    server: WebServer = request.getfixturevalue(name)
    file = server.tree["/100k.bin"]
    [first] = await collect([server.url(file.path)], include_headers=True)
    assert first.headers is not None
    etag = first.headers["etag"]
    conditional = {"url": server.url(file.path), "headers": {"If-None-Match": etag}}
    records = await collect([conditional, server.url(file.path)] * 3, concurrency=1, retries=0)
    assert sorted((r.status, r.size, r.sha256 if r.status == 200 else None) for r in records) == sorted(
        [(304, 0, None)] * 3 + [(200, file.size, file.sha256)] * 3
    )
    assert all(r.ok and r.error is None for r in records)


async def test_an_http_1_0_server_is_recorded_as_such(python_http_server: WebServer) -> None:
    """python's http.server answers in HTTP/1.0 and closes: the record says HTTP/1.0, and 50 in a row all arrive."""
    file = python_http_server.tree["/100k.bin"]
    records = await collect([python_http_server.url(file.path)] * 50, concurrency=1)
    assert {(r.http_version, r.status, r.sha256, r.attempts) for r in records} == {("HTTP/1.0", 200, file.sha256, 1)}
