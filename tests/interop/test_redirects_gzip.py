"""Redirect chains and gzip from real servers: hops recorded as sent, bodies decoded to the file on disk."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from asyncfetch.errors import ErrorKind
from tests.conftest import collect
from tests.interop.conftest import WebServer, curl_env
from tests.interop.servers import CHAIN, CHAIN_END, CHAIN_START, LOOP, TEXT_FILE

pytestmark = pytest.mark.anyio

REDIRECTING = ["nginx", "nginx_tls", "apache2", "lighttpd", "lighttpd_h2", "caddy_tls", "h2o", "h2o_tls"]
GZIPPING = ["nginx", "nginx_tls", "apache2", "apache2_tls", "lighttpd", "lighttpd_h2", "caddy_tls", "h2o", "h2o_tls"]


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("name", REDIRECTING)
async def test_a_chain_of_three_redirects_is_followed_and_recorded(name: str, request: pytest.FixtureRequest) -> None:
    """/chain/3 -> /chain/2 -> /chain/1 -> /1k.bin: three hops in order with the server's statuses, then the file."""
    server: WebServer = request.getfixturevalue(name)
    [record] = await collect([server.url(CHAIN_START)])
    assert record.error is None, record.error
    assert [(hop.status, hop.url) for hop in record.redirects] == [
        (status, server.url(path)) for (path, _, _), status in zip(CHAIN, server.chain_statuses, strict=True)
    ]
    assert record.final_url == server.url(CHAIN_END)
    assert (record.status, record.sha256) == (200, server.tree[CHAIN_END].sha256)


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("name", REDIRECTING)
async def test_a_redirect_loop_ends_in_too_many_redirects(name: str, request: pytest.FixtureRequest) -> None:
    """A path that redirects to itself: error too_many_redirects after max_redirects hops, no retry."""
    server: WebServer = request.getfixturevalue(name)
    [record] = await collect([server.url(LOOP)], max_redirects=3)
    assert record.error is not None
    assert record.error.kind == ErrorKind.TOO_MANY_REDIRECTS
    assert record.attempts == 1


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("name", GZIPPING)
async def test_a_gzip_coded_text_is_decoded_to_the_file_on_disk(name: str, request: pytest.FixtureRequest) -> None:
    """The server gzips the text (its header says so); size and sha256 are those of the file, not of the gzip."""
    server: WebServer = request.getfixturevalue(name)
    text = server.tree[TEXT_FILE]
    [record] = await collect([server.url(TEXT_FILE)], include_headers=True)
    assert record.error is None, record.error
    assert record.headers is not None
    assert record.headers.get("content-encoding") == "gzip"
    assert (record.status, record.size, record.sha256) == (200, text.size, text.sha256)


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("name", ["nginx_tls", "caddy_tls"])
async def test_a_gzip_coded_text_decodes_as_curl_decodes_it(
    name: str, request: pytest.FixtureRequest, curl: str, ca_file: Path, tmp_path: Path
) -> None:
    """curl --compressed on the same URL gets the same bytes the record describes."""
    server: WebServer = request.getfixturevalue(name)
    out = tmp_path / "body"
    done = subprocess.run(
        [curl, "-sS", "--compressed", "--cacert", str(ca_file), "-o", str(out), server.url(TEXT_FILE)],
        capture_output=True,
        text=True,
        env=curl_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [record] = await collect([server.url(TEXT_FILE)])
    body = out.read_bytes()
    assert (record.size, record.sha256) == (len(body), hashlib.sha256(body).hexdigest())
