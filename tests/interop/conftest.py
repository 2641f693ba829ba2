"""Session fixtures of the interop suite: real servers from Debian's packages (and PyPI's httpbin).

Each server fixture starts its server on first use, on 127.0.0.1 and a free port, with a config in a
temp dir of its own, and stops it at the end of the session. All web servers serve the one
:class:`~tests.interop.servers.StaticTree` (0 B, 1 KB, 100 KB, 10 MB and a gzip-able text, sha256
known). A server that is not installed skips the tests that need it, except under ``CI=true``, where it
fails them. Every test in this directory carries the ``interop`` marker (``pytest -m interop``).

Each fixture's docstring says what it gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.interop import configs
from tests.interop.configs import Certificate
from tests.interop.servers import (
    CHAIN,
    ServerProcess,
    Servers,
    StaticTree,
    binary_version,
    find_binary,
    make_static_tree,
    public_tempdir,
    start_on_free_port,
    under_ci,
)

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``interop``, whoever wrote it."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.interop)


@dataclass(frozen=True)
class WebServer:
    """A running web server: what it is, where, and what it was set up to do.

    ``prefix`` is put before a static file's path (node serves them under ``/static``).
    ``chain_statuses`` are the statuses of the hops of ``/chain/3`` (empty: no redirects set up).
    """

    name: str
    version: str
    base_url: str
    tree: StaticTree
    process: ServerProcess
    prefix: str = ""
    http2: bool = False
    gzip: bool = True
    chain_statuses: tuple[int, ...] = tuple(status for _, status, _ in CHAIN)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.base_url.startswith("https:")

    @property
    def port(self) -> int:
        return self.process.port

    def url(self, path: str) -> str:
        """The URL of ``path`` on this server (static files get the server's prefix)."""
        if path in self.tree.files:
            path = self.prefix + path
        return self.base_url + path

    @property
    def log_dir(self) -> Path:
        return self.process.workdir


@dataclass(frozen=True)
class Proxy:
    """A running proxy: its URL (``http://127.0.0.1:PORT`` or ``socks5://…``), version, log directory."""

    name: str
    version: str
    url: str
    process: ServerProcess

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def log_dir(self) -> Path:
        return self.process.workdir


# ---------------------------------------------------------------------------------------------------
# Shared pieces


@pytest.fixture(scope="session")
def interop_servers() -> Iterator[Servers]:
    """Every server this session started; all are stopped at its end, whatever happened."""
    servers = Servers()
    yield servers
    servers.stop_all()


@pytest.fixture(scope="session")
def interop_dir() -> Iterator[Path]:
    """A temp dir for configs, logs and the static tree that user nobody can read."""
    with public_tempdir("asyncfetch-interop-") as path:
        yield path


@pytest.fixture(scope="session")
def static_tree(interop_dir: Path) -> StaticTree:
    """The files every server serves: 0 B, 1 KB, 100 KB, 10 MB and a text, their sizes and sha256."""
    return make_static_tree(interop_dir / "static")


def _certificate(ca: trustme.CA, directory: Path, *hosts: str) -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_cert(*hosts)
    cert, key, combined = directory / "cert.pem", directory / "key.pem", directory / "combined.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    issued.private_key_and_cert_chain_pem.write_to_path(str(combined))
    for path in (cert, key, combined):
        path.chmod(0o644)  # servers that drop privileges read them as nobody
    return Certificate(cert, key, combined)


@pytest.fixture(scope="session")
def server_certificate(certificate_authority: trustme.CA, interop_dir: Path) -> Certificate:
    """A certificate for 127.0.0.1 and localhost, signed by the suite's CA (``ca_file``)."""
    return _certificate(certificate_authority, interop_dir / "tls", "127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def wrong_host_certificate(certificate_authority: trustme.CA, interop_dir: Path) -> Certificate:
    """A certificate from the suite's CA for another name: verification fails on the host name."""
    return _certificate(certificate_authority, interop_dir / "tls-wrong-host", "wrong-host.invalid")


@pytest.fixture
def trust_ca(ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process fetches trust the suite's CA (asyncfetch reads ``SSL_CERT_FILE``) for this test."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    return ca_file


@pytest.fixture(scope="session")
def cli_tls_env(ca_file: Path) -> dict[str, str]:
    """The environment a CLI subprocess needs to trust the suite's CA."""
    return {"SSL_CERT_FILE": str(ca_file)}


def _once(cache: dict[Any, Any], key: Any, make: Callable[[], Any]) -> Any:
    if key not in cache:
        cache[key] = make()
    return cache[key]


# ---------------------------------------------------------------------------------------------------
# nginx

StartNginx = Callable[..., WebServer]


@pytest.fixture(scope="session")
def start_nginx(
    interop_servers: Servers,
    interop_dir: Path,
    static_tree: StaticTree,
    server_certificate: Certificate,
    wrong_host_certificate: Certificate,
) -> StartNginx:
    """A factory: ``start_nginx(tls=False, http2=False, keepalive_requests=1000, keepalive_timeout="75s",
    certificate="good" | "wrong-host")`` gives a running nginx so set up, one per set of arguments.

    Its access log (``log_dir / "access.log"``) has one line per request: connection number, requests
    so far on that connection, protocol, method, URI, status.
    """
    binary = find_binary("nginx")
    version = binary_version([binary, "-v"]).removeprefix("nginx version: ")
    started: dict[Any, WebServer] = {}
    certificates = {"good": server_certificate, "wrong-host": wrong_host_certificate}

    def start(
        *,
        tls: bool = False,
        http2: bool = False,
        keepalive_requests: int = 1000,
        keepalive_timeout: str = "75s",
        certificate: str = "good",
    ) -> WebServer:
        settings = {
            "tls": tls or http2,
            "http2": http2,
            "keepalive_requests": keepalive_requests,
            "keepalive_timeout": keepalive_timeout,
            "certificate": certificate,
        }
        key = tuple(sorted(settings.items()))

        def make() -> WebServer:
            workdir = interop_dir / f"nginx-{len(started)}"
            cert = certificates[certificate] if settings["tls"] else None

            def configure(port: int) -> list[str]:
                conf = configs.nginx_conf(
                    workdir,
                    port,
                    static_tree,
                    certificate=cert,
                    http2=http2,
                    keepalive_requests=keepalive_requests,
                    keepalive_timeout=keepalive_timeout,
                )
                return [binary, "-p", str(workdir), "-c", str(conf)]

            process = interop_servers.add(start_on_free_port("nginx", workdir, configure))
            scheme = "https" if cert else "http"
            return WebServer(
                name="nginx",
                version=version,
                base_url=f"{scheme}://127.0.0.1:{process.port}",
                tree=static_tree,
                process=process,
                http2=http2,
                settings=settings,
            )

        server: WebServer = _once(started, key, make)
        return server

    return start


@pytest.fixture(scope="session")
def nginx(start_nginx: StartNginx) -> WebServer:
    """nginx over plain HTTP/1.1 with its defaults (keepalive_requests 1000, keepalive_timeout 75s)."""
    return start_nginx()


@pytest.fixture(scope="session")
def nginx_tls(start_nginx: StartNginx) -> WebServer:
    """nginx over TLS (the suite's CA), HTTP/1.1 only."""
    return start_nginx(tls=True)


@pytest.fixture(scope="session")
def nginx_h2(start_nginx: StartNginx) -> WebServer:
    """nginx over TLS offering h2 and http/1.1 by ALPN, keepalive_requests 1000 (GOAWAY after 1,000 streams)."""
    return start_nginx(tls=True, http2=True)


@pytest.fixture(scope="session")
def nginx_keepalive_2(start_nginx: StartNginx) -> WebServer:
    """nginx over plain HTTP/1.1 closing every connection after its 2nd request (keepalive_requests 2)."""
    return start_nginx(keepalive_requests=2)


@pytest.fixture(scope="session")
def nginx_idle_1s(start_nginx: StartNginx) -> WebServer:
    """nginx over plain HTTP/1.1 closing a connection idle for 1 s (keepalive_timeout 1s)."""
    return start_nginx(keepalive_timeout="1s")


@pytest.fixture(scope="session")
def nginx_wrong_host(start_nginx: StartNginx) -> WebServer:
    """nginx over TLS with a certificate (from the suite's CA) for another host name."""
    return start_nginx(tls=True, certificate="wrong-host")


# ---------------------------------------------------------------------------------------------------
# apache2, lighttpd, caddy, h2o


def _apache(
    servers: Servers, workdir: Path, tree: StaticTree, certificate: Certificate | None, **settings: Any
) -> WebServer:
    binary = find_binary("apache2")
    version = binary_version([binary, "-v"]).removeprefix("Server version: ")

    def configure(port: int) -> list[str]:
        conf = configs.apache_conf(workdir, port, tree, certificate=certificate, **settings)
        return [binary, "-f", str(conf), "-DFOREGROUND"]

    process = servers.add(start_on_free_port("apache2", workdir, configure))
    scheme = "https" if certificate else "http"
    return WebServer(
        name="apache2",
        version=version,
        base_url=f"{scheme}://127.0.0.1:{process.port}",
        tree=tree,
        process=process,
        http2=bool(settings.get("http2")),
        settings=settings,
    )


@pytest.fixture(scope="session")
def apache2(interop_servers: Servers, interop_dir: Path, static_tree: StaticTree) -> WebServer:
    """apache2 (event MPM) over plain HTTP/1.1, as user nobody."""
    return _apache(interop_servers, interop_dir / "apache2", static_tree, None)


@pytest.fixture(scope="session")
def apache2_tls(
    interop_servers: Servers, interop_dir: Path, static_tree: StaticTree, server_certificate: Certificate
) -> WebServer:
    """apache2 over TLS offering h2 and http/1.1 (mod_http2)."""
    return _apache(interop_servers, interop_dir / "apache2-tls", static_tree, server_certificate, http2=True)


@pytest.fixture(scope="session")
def apache2_keepalive_2(interop_servers: Servers, interop_dir: Path, static_tree: StaticTree) -> WebServer:
    """apache2 over plain HTTP/1.1 closing each connection after 2 requests, or after 1 s idle.

    (MaxKeepAliveRequests 1: apache does not count a connection's first request.)
    """
    return _apache(
        interop_servers, interop_dir / "apache2-ka2", static_tree, None, max_keepalive_requests=1, keepalive_timeout=1
    )


def _lighttpd(
    servers: Servers, workdir: Path, tree: StaticTree, certificate: Certificate | None, **settings: Any
) -> WebServer:
    binary = find_binary("lighttpd")
    version = binary_version([binary, "-v"]).split(" - ")[0]

    def configure(port: int) -> list[str]:
        conf = configs.lighttpd_conf(workdir, port, tree, certificate=certificate, **settings)
        return [binary, "-D", "-f", str(conf)]

    process = servers.add(start_on_free_port("lighttpd", workdir, configure))
    scheme = "https" if certificate else "http"
    return WebServer(
        name="lighttpd",
        version=version,
        base_url=f"{scheme}://127.0.0.1:{process.port}",
        tree=tree,
        process=process,
        http2=certificate is not None,
        chain_statuses=(302, 302, 302),  # url.redirect-code is one status for all
        settings=settings,
    )


@pytest.fixture(scope="session")
def lighttpd(interop_servers: Servers, interop_dir: Path, static_tree: StaticTree) -> WebServer:
    """lighttpd over plain HTTP/1.1."""
    return _lighttpd(interop_servers, interop_dir / "lighttpd", static_tree, None)


@pytest.fixture(scope="session")
def lighttpd_h2(
    interop_servers: Servers, interop_dir: Path, static_tree: StaticTree, server_certificate: Certificate
) -> WebServer:
    """lighttpd over TLS with h2 (built into lighttpd 1.4.56+); it follows the client's ALPN order."""
    return _lighttpd(interop_servers, interop_dir / "lighttpd-h2", static_tree, server_certificate)


@pytest.fixture(scope="session")
def lighttpd_keepalive_2(interop_servers: Servers, interop_dir: Path, static_tree: StaticTree) -> WebServer:
    """lighttpd over plain HTTP/1.1 closing each connection after 2 requests, or after 1 s idle.

    (server.max-keep-alive-requests 1: lighttpd does not count a connection's first request.)
    """
    return _lighttpd(
        interop_servers, interop_dir / "lighttpd-ka2", static_tree, None, max_keepalive_requests=1, max_keepalive_idle=1
    )


@pytest.fixture(scope="session")
def caddy_tls(
    interop_servers: Servers, interop_dir: Path, static_tree: StaticTree, server_certificate: Certificate
) -> WebServer:
    """caddy over TLS with the suite's certificate, h2 and http/1.1 (no HTTP/3), admin API off."""
    binary = find_binary("caddy")
    version = binary_version([binary, "version"])
    workdir = interop_dir / "caddy"
    # caddy keeps state under $HOME / XDG dirs: keep them in the temp dir, not in root's home.
    env = {"HOME": str(workdir), "XDG_DATA_HOME": str(workdir / "data"), "XDG_CONFIG_HOME": str(workdir / "config")}

    def configure(port: int) -> list[str]:
        conf = configs.caddyfile(workdir, port, static_tree, certificate=server_certificate)
        return [binary, "run", "--config", str(conf), "--adapter", "caddyfile"]

    process = interop_servers.add(start_on_free_port("caddy", workdir, configure, env=env))
    return WebServer(
        name="caddy",
        version=version,
        base_url=f"https://127.0.0.1:{process.port}",
        tree=static_tree,
        process=process,
        http2=True,
    )


def _h2o(servers: Servers, workdir: Path, tree: StaticTree, certificate: Certificate | None) -> WebServer:
    binary = find_binary("h2o")
    version = binary_version([binary, "--version"])
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o777)  # h2o writes its log as nobody

    def configure(port: int) -> list[str]:
        return [binary, "-c", str(configs.h2o_conf(workdir, port, tree, certificate=certificate))]

    process = servers.add(start_on_free_port("h2o", workdir, configure))
    scheme = "https" if certificate else "http"
    return WebServer(
        name="h2o",
        version=version,
        base_url=f"{scheme}://127.0.0.1:{process.port}",
        tree=tree,
        process=process,
        http2=certificate is not None,
    )


@pytest.fixture(scope="session")
def h2o(interop_servers: Servers, interop_dir: Path, static_tree: StaticTree) -> WebServer:
    """h2o over plain HTTP/1.1."""
    return _h2o(interop_servers, interop_dir / "h2o", static_tree, None)


@pytest.fixture(scope="session")
def h2o_tls(
    interop_servers: Servers, interop_dir: Path, static_tree: StaticTree, server_certificate: Certificate
) -> WebServer:
    """h2o over TLS offering h2 and http/1.1."""
    return _h2o(interop_servers, interop_dir / "h2o-tls", static_tree, server_certificate)


# ---------------------------------------------------------------------------------------------------
# Servers of our own making on real runtimes: node's http, python's http.server, httpbin


@pytest.fixture(scope="session")
def node_server(interop_servers: Servers, interop_dir: Path, static_tree: StaticTree) -> WebServer:
    """node's http module running tests/interop/node_server.js: close-delimited, trailers, 1xx (see there)."""
    binary = find_binary("node")
    version = "node " + binary_version([binary, "--version"])
    script = HERE / "node_server.js"
    process = interop_servers.add(
        start_on_free_port(
            "node", interop_dir / "node", lambda port: [binary, str(script), str(port), str(static_tree.root)]
        )
    )
    return WebServer(
        name="node",
        version=version,
        base_url=f"http://127.0.0.1:{process.port}",
        tree=static_tree,
        process=process,
        prefix="/static",
        gzip=False,
        chain_statuses=(),
    )


@pytest.fixture(scope="session")
def python_http_server(interop_servers: Servers, interop_dir: Path, static_tree: StaticTree) -> WebServer:
    """python's http.server (HTTP/1.0 answers, a connection per request)."""
    version = f"python {sys.version.split()[0]} http.server"
    process = interop_servers.add(
        start_on_free_port(
            "http.server",
            interop_dir / "http.server",
            lambda port: [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(static_tree.root),
            ],
        )
    )
    return WebServer(
        name="http.server",
        version=version,
        base_url=f"http://127.0.0.1:{process.port}",
        tree=static_tree,
        process=process,
        gzip=False,
        chain_statuses=(),
    )


@pytest.fixture(scope="session")
def httpbin(interop_servers: Servers, interop_dir: Path, static_tree: StaticTree) -> WebServer:
    """httpbin (PyPI) under gunicorn's threaded worker: /redirect/N, /gzip, /stream-bytes/N, /status/N…"""
    try:
        import gunicorn  # type: ignore[import-untyped]  # noqa: F401
        import httpbin as _httpbin  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:
        reason = f"httpbin/gunicorn not installed ({exc}); pip install -e '.[test]' brings them"
        if under_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    from importlib.metadata import version as installed

    process = interop_servers.add(
        start_on_free_port(
            "httpbin",
            interop_dir / "httpbin",
            lambda port: [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--worker-class",
                "gthread",
                "--threads",
                "8",
                "--workers",
                "1",
                "--keep-alive",
                "5",
                "httpbin:app",
            ],
        )
    )
    return WebServer(
        name="httpbin",
        version=f"httpbin {installed('httpbin')} on gunicorn {installed('gunicorn')}",
        base_url=f"http://127.0.0.1:{process.port}",
        tree=static_tree,
        process=process,
        chain_statuses=(),
    )


# ---------------------------------------------------------------------------------------------------
# Proxies


def _squid(servers: Servers, workdir: Path, user: str | None = None) -> Proxy:
    binary = find_binary("squid")
    version = binary_version([binary, "-v"])
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o777)  # squid writes its logs as nobody

    def configure(port: int) -> list[str]:
        return [binary, "-N", "-f", str(configs.squid_conf(workdir, port, user=user))]

    process = servers.add(start_on_free_port("squid", workdir, configure))
    credentials = f"{user}:secret@" if user else ""
    return Proxy("squid", version, f"http://{credentials}127.0.0.1:{process.port}", process)


@pytest.fixture(scope="session")
def squid_proxy(interop_servers: Servers, interop_dir: Path) -> Proxy:
    """squid as a forward HTTP proxy (CONNECT to any port allowed) for 127.0.0.1; its log dir has access.log."""
    return _squid(interop_servers, interop_dir / "squid")


@pytest.fixture(scope="session")
def squid_proxy_auth(interop_servers: Servers, interop_dir: Path) -> Proxy:
    """squid requiring Basic proxy authentication: ``http://user:secret@127.0.0.1:PORT`` (407 without it)."""
    return _squid(interop_servers, interop_dir / "squid-auth", user="user")


@pytest.fixture(scope="session")
def socks_proxy(interop_servers: Servers, interop_dir: Path) -> Proxy:
    """microsocks as a SOCKS5 proxy without authentication; its URL is ``socks5://127.0.0.1:PORT``."""
    binary = find_binary("microsocks")
    process = interop_servers.add(
        start_on_free_port(
            "microsocks", interop_dir / "microsocks", lambda port: [binary, "-i", "127.0.0.1", "-p", str(port)]
        )
    )
    return Proxy("microsocks", _debian_version("microsocks"), f"socks5://127.0.0.1:{process.port}", process)


@pytest.fixture(scope="session")
def socks_proxy_auth(interop_servers: Servers, interop_dir: Path) -> Proxy:
    """microsocks requiring user ``user`` and password ``secret``: ``socks5://user:secret@127.0.0.1:PORT``."""
    binary = find_binary("microsocks")
    process = interop_servers.add(
        start_on_free_port(
            "microsocks",
            interop_dir / "microsocks-auth",
            lambda port: [binary, "-i", "127.0.0.1", "-p", str(port), "-u", "user", "-P", "secret"],
        )
    )
    return Proxy("microsocks", _debian_version("microsocks"), f"socks5://user:secret@127.0.0.1:{process.port}", process)


def _debian_version(package: str) -> str:
    """A package's version from dpkg, for programs that cannot print their own."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=False, timeout=20
    )
    return f"{package} {done.stdout.strip() or '?'}"


@pytest.fixture(scope="session")
def curl() -> str:
    """The path of curl, the reference client the suite compares answers with."""
    return find_binary("curl")


def curl_env() -> dict[str, str]:
    """An environment for curl without proxy variables (tests ask for proxies explicitly)."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
