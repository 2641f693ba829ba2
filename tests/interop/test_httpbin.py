"""httpbin under gunicorn: relative and absolute redirect chains, gzip and deflate, chunked streams, statuses."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import collect
from tests.interop.conftest import WebServer, curl_env

pytestmark = pytest.mark.anyio


async def test_relative_and_absolute_redirect_chains_are_followed(httpbin: WebServer) -> None:
    """/redirect/4 (relative Locations) and /absolute-redirect/4: four 302 hops each, ending at /get."""
    records = {r.url: r for r in await collect([httpbin.url("/redirect/4"), httpbin.url("/absolute-redirect/4")])}
    relative, absolute = records[httpbin.url("/redirect/4")], records[httpbin.url("/absolute-redirect/4")]
    assert [hop.url for hop in relative.redirects] == [
        httpbin.url("/redirect/4"),
        httpbin.url("/relative-redirect/3"),
        httpbin.url("/relative-redirect/2"),
        httpbin.url("/relative-redirect/1"),
    ]
    assert [hop.url for hop in absolute.redirects] == [httpbin.url(f"/absolute-redirect/{n}") for n in (4, 3, 2, 1)]
    for record in (relative, absolute):
        assert [hop.status for hop in record.redirects] == [302] * 4
        assert (record.status, record.final_url) == (200, httpbin.url("/get"))


@pytest.mark.parametrize(
    ("path", "coding", "flag"),
    [("/gzip", "gzip", "gzipped"), ("/deflate", "deflate", "deflated"), ("/brotli", "br", "brotli")],
)
async def test_gzip_and_deflate_bodies_are_decoded(httpbin: WebServer, path: str, coding: str, flag: str) -> None:
    """httpbin's /gzip, /deflate and /brotli: the record's body is the JSON inside, which says it was coded."""
    [record] = await collect([httpbin.url(path)], include_body=True, include_headers=True)
    assert record.error is None, record.error
    assert record.headers is not None
    assert record.headers["content-encoding"] == coding
    assert record.body is not None
    assert json.loads(record.body)[flag] is True
    assert record.size == len(record.body.encode())


async def test_statuses_are_recorded_as_sent(httpbin: WebServer) -> None:
    """/status/N for a few N: the status as sent, ok below 400, no error either way (retries off)."""
    codes = [200, 204, 404, 418, 500]
    records = {r.url: r for r in await collect([httpbin.url(f"/status/{code}") for code in codes], retries=0)}
    for code in codes:
        record = records[httpbin.url(f"/status/{code}")]
        assert (record.status, record.ok, record.error) == (code, code < 400, None)


async def test_a_chunked_stream_matches_curl(httpbin: WebServer, curl: str, tmp_path: Path) -> None:
    """/stream-bytes (chunks of 1,000 bytes, seeded): the record's size and sha256 are curl's."""
    url = httpbin.url("/stream-bytes/100000?seed=7&chunk_size=1000")
    out = tmp_path / "body"
    done = subprocess.run(
        [curl, "-sS", "-o", str(out), url], capture_output=True, text=True, env=curl_env(), timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    body = out.read_bytes()
    assert len(body) == 100000  # httpbin's upper bound
    [record] = await collect([url], include_headers=True)
    assert record.headers is not None
    assert record.headers.get("transfer-encoding") == "chunked"
    assert (record.status, record.size, record.sha256) == (200, len(body), hashlib.sha256(body).hexdigest())


async def test_a_post_body_reaches_the_server_as_sent(httpbin: WebServer) -> None:
    """A JSON request's body and method arrive intact: httpbin's /anything echoes them back."""
    payload = {"name": "asyncfetch", "values": list(range(50))}
    [record] = await collect([{"url": httpbin.url("/anything"), "json": payload}], include_body=True)
    assert record.body is not None
    echoed = json.loads(record.body)
    assert echoed["method"] == "POST"
    assert echoed["json"] == payload
    assert echoed["headers"]["Content-Type"] == "application/json"
