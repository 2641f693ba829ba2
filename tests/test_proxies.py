"""Proxies: validated before anything is fetched, scheme-less taken as http:// (as curl), a dead proxy
named in its records, credentials never shown, phases read from httpcore's trace events. Through squid and
microsocks: tests/interop/test_proxies.py."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

import asyncfetch
from asyncfetch.client import ProxyPhases
from asyncfetch.options import parse_proxy
from asyncfetch.transport import PhaseTimer
from tests.conftest import collect, records_of, run_cli, unused_port
from tests.server import TestServer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        ("127.0.0.1:3128", "http://127.0.0.1:3128"),
        ("notaproxy", "http://notaproxy:1080"),
        ("http://proxy.example", "http://proxy.example:1080"),
        ("https://proxy.example", "https://proxy.example:443"),
        ("SOCKS5H://user:secret@[::1]:9050/", "socks5h://user:secret@[::1]:9050"),
    ],
)
def test_a_proxy_url_is_completed_as_curl_does(given: str, taken: str) -> None:
    """No scheme is http://, no port is 1080 (443 for https://): the forms curl accepts."""
    assert parse_proxy(given) == taken


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("ftp://127.0.0.1:21", "unsupported proxy scheme 'ftp'"),
        ("socks4://127.0.0.1:1080", "unsupported proxy scheme 'socks4'"),
        ("http://:3128", "needs a host"),
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:3128/some/path", "no path"),
        ("  ", "empty"),
    ],
)
def test_a_bad_proxy_is_refused_when_the_options_are_made(given: str, says: str) -> None:
    """FetchOptions refuses a proxy it cannot use, with a message saying why: before anything is fetched."""
    with pytest.raises(ValueError, match="proxy") as caught:
        asyncfetch.FetchOptions(proxy=given)
    assert says in str(caught.value)


def test_a_bad_proxy_message_never_shows_its_credentials() -> None:
    """The password in a refused proxy URL is not repeated in the error."""
    with pytest.raises(ValueError) as caught:
        asyncfetch.FetchOptions(proxy="ftp://user:hunter2@127.0.0.1:21")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "https_proxy", "ALL_PROXY"])
def test_a_bad_proxy_variable_is_refused_when_the_run_is_made(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A *_PROXY variable that cannot be used: fetch() raises ValueError naming it, before any request."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "ftp://user:hunter2@127.0.0.1:21")
    asyncfetch.FetchOptions()  # a value: the environment is read by the run, not by the options
    with pytest.raises(ValueError, match=variable.lower()) as caught:
        asyncfetch.fetch(["http://127.0.0.1:1/"])
    assert "hunter2" not in str(caught.value)


def test_the_cli_exits_2_on_an_unsupported_proxy_scheme(fresh_server: TestServer) -> None:
    """--proxy ftp://... : exit 2, one line on stderr, nothing fetched."""
    result = run_cli("--proxy", "ftp://127.0.0.1:21", input=fresh_server.url("/ok") + "\n")
    assert result.returncode == 2
    assert b"unsupported proxy scheme 'ftp'" in result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""
    assert fresh_server.stats.requests == []


def test_the_cli_exits_2_on_a_bad_proxy_variable(fresh_server: TestServer) -> None:
    """A bad http_proxy in the environment: exit 2 naming the variable, nothing fetched."""
    result = run_cli("-q", input=fresh_server.url("/ok") + "\n", env={"http_proxy": "ftp://127.0.0.1:21"})
    assert result.returncode == 2
    assert b"http_proxy" in result.stderr
    assert b"Traceback" not in result.stderr
    assert fresh_server.stats.requests == []


async def test_a_dead_proxy_gives_connect_records_naming_the_proxy(server: TestServer) -> None:
    """Every request through a proxy nobody listens on is a connect record saying it was the proxy."""
    port = unused_port()
    records = await collect(
        [server.url(f"/ok?i={i}") for i in range(5)], proxy=f"http://user:hunter2@127.0.0.1:{port}", retries=0
    )
    assert len(records) == 5
    for record in records:
        assert record.error is not None
        assert record.error.kind == "connect"
        assert record.error.message == f"proxy 127.0.0.1:{port}: connection refused"


async def test_a_scheme_less_proxy_is_an_http_proxy(fresh_server: TestServer, server: TestServer) -> None:
    """--proxy 127.0.0.1:PORT works as http://127.0.0.1:PORT (the proxy gets the absolute-form request)."""
    target = server.url("/ok")
    [record] = await collect([target], proxy=f"127.0.0.1:{fresh_server.port}")
    assert record.status == 200
    assert fresh_server.stats.paths() == [target]


def test_a_scheme_less_proxy_variable_is_an_http_proxy(fresh_server: TestServer, server: TestServer) -> None:
    """http_proxy=127.0.0.1:PORT, as curl takes it."""
    target = server.url("/ok")
    result = run_cli("-q", input=target + "\n", env={"http_proxy": f"127.0.0.1:{fresh_server.port}", "NO_PROXY": ""})
    assert result.returncode == 0, result.stderr
    assert records_of(result.stdout)[0]["status"] == 200
    assert fresh_server.stats.paths() == [target]


def test_a_dead_proxy_in_the_cli_is_records_and_exit_1_without_credentials(server: TestServer) -> None:
    """Through the CLI: one record per line, each naming the proxy but not its password; no traceback."""
    port = unused_port()
    lines = "".join(server.url(f"/ok?i={i}") + "\n" for i in range(3))
    result = run_cli("-r", "0", "--proxy", f"http://user:hunter2@127.0.0.1:{port}", input=lines)
    records = records_of(result.stdout)
    assert len(records) == 3
    assert {r["error"]["message"] for r in records} == {f"proxy 127.0.0.1:{port}: connection refused"}
    assert b"hunter2" not in result.stdout + result.stderr
    assert b"Traceback" not in result.stderr


async def test_no_proxy_sends_a_host_direct(fresh_server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_PROXY naming the host bypasses the *_PROXY proxy (a dead one here: any use of it would fail)."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    [record] = await collect([fresh_server.url("/ok")], retries=0)
    assert record.status == 200


Events = list[tuple[str, dict[str, Any]]]


def _exchange(prefix: str, method: bytes) -> Events:
    """httpcore's events for one request and its response head, on an open connection."""
    request: dict[str, Any] = {"request": SimpleNamespace(method=method)}
    return [
        (f"{prefix}.send_request_headers.started", request),
        (f"{prefix}.send_request_headers.complete", {}),
        (f"{prefix}.send_request_body.started", request),
        (f"{prefix}.send_request_body.complete", {}),
        (f"{prefix}.receive_response_headers.started", request),
        (f"{prefix}.receive_response_headers.complete", {}),
    ]


_TCP: Events = [("connection.connect_tcp.started", {}), ("connection.connect_tcp.complete", {})]
_PROXY_TLS: Events = [("connection.start_tls.started", {}), ("connection.start_tls.complete", {})]
_TUNNEL_TLS: Events = [("proxy.start_tls.started", {}), ("proxy.start_tls.complete", {})]
_SOCKS: Events = [
    ("socks.connect_tcp.started", {}),
    ("socks.connect_tcp.complete", {}),
    ("socks.setup_socks5_connection.started", {}),
    ("socks.setup_socks5_connection.complete", {}),
]


@pytest.mark.parametrize(
    ("events", "connect", "tls"),
    [
        # HTTPS through an HTTP proxy: TCP (ticks 1-2), CONNECT (3-8), the origin's TLS (9-10), the request.
        (_TCP + _exchange("http11", b"CONNECT") + _TUNNEL_TLS + _exchange("http11", b"GET"), 8, 1),
        # The same through an https:// proxy: its own TLS (3-4) is part of connect, not tls.
        (_TCP + _PROXY_TLS + _exchange("http11", b"CONNECT") + _TUNNEL_TLS + _exchange("http2", b"GET"), 10, 1),
        # Plain HTTP through SOCKS5: TCP and the SOCKS handshake (1-4); no TLS.
        (_SOCKS + _exchange("http11", b"GET"), 4, None),
        # Plain HTTP through an HTTP proxy, absolute form: TCP only.
        (_TCP + _exchange("http11", b"GET"), 2, None),
        # A kept connection or tunnel: nothing to connect.
        (_exchange("http11", b"GET"), None, None),
    ],
    ids=["connect-tunnel", "https-proxy", "socks5", "forward", "kept"],
)
async def test_proxy_phases_follow_httpcore_events(events: Events, connect: int | None, tls: int | None) -> None:
    """connect runs from the TCP connect to the proxy until the stream to the origin is open, CONNECT and
    SOCKS handshakes included; tls is the origin's handshake alone; ttfb is the request's, not CONNECT's."""
    timer = PhaseTimer()
    ticks = itertools.count(1)
    phases = ProxyPhases(timer, clock=lambda: float(next(ticks)))
    for name, info in events:
        await phases(name, info)
    last = len(events)  # the request's response head: "started" at last - 1, "complete" at last
    assert (timer.dns, timer.connect, timer.tls) == (None, connect, tls)
    assert (timer.sent, timer.first_byte) == (last - 1, last)


async def test_a_connect_exchange_is_not_the_requests_first_byte() -> None:
    """When the origin's TLS fails inside the tunnel, ttfb stays null: the CONNECT's answer is the proxy's."""
    timer = PhaseTimer()
    ticks = itertools.count(1)
    phases = ProxyPhases(timer, clock=lambda: float(next(ticks)))
    events = [*_TCP, *_exchange("http11", b"CONNECT"), ("proxy.start_tls.started", {}), ("proxy.start_tls.failed", {})]
    for name, info in events:
        await phases(name, info)
    assert (timer.connect, timer.tls, timer.sent, timer.first_byte) == (8, None, None, None)
