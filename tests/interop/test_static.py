"""Static files from every real server arrive whole: status, size and sha256 as on disk, 404s as statuses."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.conftest import collect, records_of, run_cli
from tests.interop.conftest import WebServer, curl_env

pytestmark = pytest.mark.anyio

PLAIN = ["nginx", "apache2", "lighttpd", "h2o", "node_server", "python_http_server"]
TLS = ["nginx_tls", "nginx_h2", "apache2_tls", "lighttpd_h2", "caddy_tls", "h2o_tls"]


@pytest.fixture(params=PLAIN + TLS)
def web_server(request: pytest.FixtureRequest) -> WebServer:
    """Each web server of the suite in turn, over HTTP or HTTPS."""
    server: WebServer = request.getfixturevalue(request.param)
    return server


@pytest.mark.usefixtures("trust_ca")
async def test_every_file_matches_the_file_on_disk(web_server: WebServer) -> None:
    """0 B to 10 MB: every record is 200 with the size and sha256 of the file served, over HTTP/1.1."""
    tree = web_server.tree
    urls = [web_server.url(path) for path in tree.files]
    records = {record.url: record for record in await collect(urls, concurrency=4)}
    assert len(records) == len(urls)
    for path, expected in tree.files.items():
        record = records[web_server.url(path)]
        assert record.error is None, (path, record.error)
        assert record.status == 200, path
        assert record.http_version in ("HTTP/1.1", "HTTP/1.0"), path
        assert record.size == expected.size, path
        assert record.sha256 == expected.sha256, path
        assert record.attempts == 1, path


@pytest.mark.usefixtures("trust_ca")
async def test_a_missing_file_is_a_404_status_not_an_error(web_server: WebServer) -> None:
    """A path the server does not have is status 404, ok false, no error, the body read whole."""
    [record] = await collect([web_server.url(web_server.tree.missing)])
    assert record.status == 404
    assert record.error is None
    assert not record.ok
    assert record.sha256 is not None


@pytest.mark.usefixtures("trust_ca")
async def test_many_requests_on_kept_alive_connections_all_arrive(web_server: WebServer) -> None:
    """300 requests over a few reused connections: each one complete, none retried."""
    file = web_server.tree["/100k.bin"]
    records = await collect([web_server.url(file.path)] * 300, concurrency=6)
    assert len(records) == 300
    assert {(r.status, r.size, r.sha256, r.attempts) for r in records} == {(200, file.size, file.sha256, 1)}


@pytest.mark.parametrize("name", ["nginx_tls", "apache2_tls", "lighttpd_h2", "caddy_tls", "h2o_tls"])
def test_the_cli_fetches_every_file_over_https(
    name: str, request: pytest.FixtureRequest, cli_tls_env: dict[str, str]
) -> None:
    """The asyncfetch command, URLs on stdin: one record per file, each as on disk, exit 0."""
    server: WebServer = request.getfixturevalue(name)
    lines = "".join(server.url(path) + "\n" for path in server.tree.files)
    done = run_cli("-q", input=lines, env=cli_tls_env)
    assert done.returncode == 0, done.stderr.decode()
    records = {record["url"]: record for record in records_of(done.stdout)}
    for path, expected in server.tree.files.items():
        record = records[server.url(path)]
        assert (record["status"], record["size"], record["sha256"]) == (200, expected.size, expected.sha256)
        assert record["error"] is None
        assert record["ok"] is True


@pytest.mark.usefixtures("trust_ca")
async def test_the_records_agree_with_curl(nginx_tls: WebServer, curl: str, ca_file: Path, tmp_path: Path) -> None:
    """curl's bytes and status for each file are what the records say."""
    records = {r.url: r for r in await collect([nginx_tls.url(path) for path in nginx_tls.tree.files])}
    for path in nginx_tls.tree.files:
        url = nginx_tls.url(path)
        out = tmp_path / "body"
        done = subprocess.run(
            [curl, "-sS", "--cacert", str(ca_file), "-o", str(out), "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
            env=curl_env(),
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        body = out.read_bytes()
        record = records[url]
        assert (record.status, record.size, record.sha256) == (
            int(done.stdout),
            len(body),
            hashlib.sha256(body).hexdigest(),
        )
