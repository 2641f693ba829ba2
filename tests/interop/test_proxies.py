"""asyncfetch through real proxies: squid for http:// (absolute form) and https:// (CONNECT), with and
without credentials; microsocks for socks5:// and socks5h://, with and without credentials. Every
body is compared with the file on disk."""

from __future__ import annotations

import pytest

from tests.conftest import collect, records_of, run_cli
from tests.interop.conftest import Proxy, WebServer

pytestmark = pytest.mark.anyio

FILES = ["/1k.bin", "/100k.bin", "/10m.bin"]


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("proxy_name", ["squid_proxy", "squid_proxy_auth", "socks_proxy", "socks_proxy_auth"])
@pytest.mark.parametrize("server_name", ["nginx", "nginx_tls"])
async def test_files_through_each_proxy_are_the_files_on_disk(
    proxy_name: str, server_name: str, request: pytest.FixtureRequest
) -> None:
    """Plain and TLS targets through squid (CONNECT for TLS) and SOCKS5, credentials included: byte for byte."""
    proxy: Proxy = request.getfixturevalue(proxy_name)
    server: WebServer = request.getfixturevalue(server_name)
    records = {r.url: r for r in await collect([server.url(path) for path in FILES], proxy=proxy.url, retries=0)}
    for path in FILES:
        file = server.tree[path]
        record = records[server.url(path)]
        assert (record.status, record.error, record.size, record.sha256) == (200, None, file.size, file.sha256), path


@pytest.mark.usefixtures("trust_ca")
async def test_socks5h_lets_the_proxy_resolve_names(socks_proxy: Proxy, nginx: WebServer) -> None:
    """socks5h:// hands the host name to the proxy (here "localhost", which microsocks resolves)."""
    file = nginx.tree["/1k.bin"]
    url = nginx.url(file.path).replace("127.0.0.1", "localhost")
    [record] = await collect([url], proxy=socks_proxy.url.replace("socks5://", "socks5h://"), retries=0)
    assert (record.status, record.sha256) == (200, file.sha256)


def test_a_scheme_less_proxy_variable_goes_through_squid(squid_proxy: Proxy, nginx: WebServer) -> None:
    """http_proxy=127.0.0.1:PORT (no scheme, as many set it) is taken as http://, as curl does."""
    file = nginx.tree["/1k.bin"]
    bare = squid_proxy.url.removeprefix("http://")
    result = run_cli("-q", nginx.url(file.path), env={"http_proxy": bare, "NO_PROXY": ""})
    assert result.returncode == 0, result.stderr
    [record] = records_of(result.stdout)
    assert (record["status"], record["sha256"]) == (200, file.sha256)
    assert "GET " + nginx.url(file.path) in (squid_proxy.log_dir / "access.log").read_text()


def test_wrong_proxy_credentials_are_a_record_and_never_printed(squid_proxy_auth: Proxy, nginx: WebServer) -> None:
    """squid's 407 for a wrong password is the record's answer; the password is in no output."""
    wrong = squid_proxy_auth.url.replace(":secret@", ":hunter2@")
    result = run_cli("-r", "0", "--proxy", wrong, nginx.url("/1k.bin"))
    [record] = records_of(result.stdout)
    assert record["status"] == 407
    assert b"hunter2" not in result.stdout + result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.usefixtures("trust_ca")
@pytest.mark.parametrize("proxy_name", ["squid_proxy", "socks_proxy"])
@pytest.mark.parametrize("server_name", ["nginx", "nginx_tls"])
async def test_proxied_requests_are_timed_phase_by_phase(
    proxy_name: str, server_name: str, request: pytest.FixtureRequest
) -> None:
    """Through a proxy, a new connection has connect (to the proxy and through it), tls for an HTTPS origin
    and ttfb, within total; dns is null (the proxy resolves). The next request, on the kept proxy connection
    or tunnel, has null connect and tls (they did not happen) and its own ttfb."""
    proxy: Proxy = request.getfixturevalue(proxy_name)
    server: WebServer = request.getfixturevalue(server_name)
    urls = [server.url("/1k.bin"), server.url("/100k.bin")]
    first, second = await collect(urls, proxy=proxy.url, retries=0, timings=True, concurrency=1, ordered=True)
    assert (first.error, second.error) == (None, None)
    assert first.timings is not None
    assert second.timings is not None
    dns, connect, tls, ttfb, total = (
        first.timings.dns,
        first.timings.connect,
        first.timings.tls,
        first.timings.ttfb,
        first.timings.total,
    )
    assert dns is None
    assert connect is not None
    assert ttfb is not None
    assert total == first.elapsed_ms
    assert (tls is not None) == server.tls
    phases = [connect, ttfb] if tls is None else [connect, tls, ttfb]
    assert min(phases) > 0
    # Disjoint parts of one attempt: together no longer than it (each is rounded to a microsecond).
    assert sum(phases) <= total + 0.001 * len(phases)
    kept = second.timings
    assert (kept.dns, kept.connect, kept.tls) == (None, None, None)
    assert kept.ttfb is not None
    assert kept.total is not None
    assert kept.ttfb <= kept.total
