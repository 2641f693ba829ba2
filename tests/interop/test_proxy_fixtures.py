"""The proxy fixtures work as proxies, checked with curl (asyncfetch's proxy tests build on them)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import Proxy, WebServer, curl_env


def _through(curl: str, proxy: str, url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [curl, "-sS", "-x", proxy, "-o", str(out), "-w", "%{http_code}", *extra, url],
        capture_output=True,
        text=True,
        env=curl_env(),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", ["squid_proxy", "squid_proxy_auth", "socks_proxy", "socks_proxy_auth"])
def test_a_file_fetched_through_the_proxy_is_the_file_on_disk(
    name: str, request: pytest.FixtureRequest, nginx: WebServer, curl: str, tmp_path: Path
) -> None:
    """curl through each proxy gets nginx's 100 KB file byte for byte."""
    proxy: Proxy = request.getfixturevalue(name)
    file = nginx.tree["/100k.bin"]
    done = _through(curl, proxy.url, nginx.url(file.path), tmp_path / "body")
    assert (done.returncode, done.stdout) == (0, "200"), done.stderr
    assert hashlib.sha256((tmp_path / "body").read_bytes()).hexdigest() == file.sha256


def test_squid_tunnels_https_to_an_ephemeral_port(
    squid_proxy: Proxy, nginx_tls: WebServer, curl: str, ca_file: Path, tmp_path: Path
) -> None:
    """CONNECT to a port other than 443 is allowed: HTTPS through squid works, and squid logs the tunnel."""
    file = nginx_tls.tree["/1k.bin"]
    done = _through(curl, squid_proxy.url, nginx_tls.url(file.path), tmp_path / "body", "--cacert", str(ca_file))
    assert (done.returncode, done.stdout) == (0, "200"), done.stderr
    assert hashlib.sha256((tmp_path / "body").read_bytes()).hexdigest() == file.sha256


def test_the_authenticating_socks_proxy_refuses_wrong_credentials(
    socks_proxy_auth: Proxy, nginx: WebServer, curl: str, tmp_path: Path
) -> None:
    """socks_proxy_auth really checks: a wrong password is refused (curl's SOCKS failure), not let through."""
    wrong = socks_proxy_auth.url.replace(":secret@", ":wrong@")
    done = _through(curl, wrong, nginx.url("/1k.bin"), tmp_path / "body")
    assert done.returncode == 97, done.stderr  # CURLE_PROXY: the SOCKS handshake failed


def test_the_authenticating_squid_refuses_requests_without_credentials(
    squid_proxy_auth: Proxy, nginx: WebServer, curl: str, tmp_path: Path
) -> None:
    """squid_proxy_auth really checks: no credentials, or a wrong password, get 407 from the proxy."""
    anonymous = squid_proxy_auth.url.replace("user:secret@", "")
    wrong = squid_proxy_auth.url.replace(":secret@", ":wrong@")
    for proxy in (anonymous, wrong):
        done = _through(curl, proxy, nginx.url("/1k.bin"), tmp_path / "body")
        assert (done.returncode, done.stdout) == (0, "407"), done.stderr
