"""The one client all workers share: a transport that routes each request to the right pool.

Requests go to :class:`~asyncfetch.transport.ConnectionPool`, our own pool: HTTP/1.1, and with
``--http2`` HTTP/2 over TLS where the server chooses it by ALPN. Requests through a proxy (from
``--proxy`` or the ``*_PROXY`` variables, unless ``NO_PROXY`` names the host) go to an
``httpx.AsyncHTTPTransport`` made for that proxy; its failures to reach the proxy are told as
such, naming the proxy but never its credentials. Without a proxy, routing costs one attribute
test per request. With ``--timings`` a proxied request is timed from httpcore's trace events
(:class:`ProxyPhases`), since httpx's transport is where its phases happen.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from asyncfetch.http import Origin
from asyncfetch.options import FetchOptions, environment_proxies, proxy_label
from asyncfetch.transport import TIMER, ConnectionPool, PhaseTimer, connection_budget, tls_context


class Client(httpx.AsyncBaseTransport):
    """Routes requests between our pool and httpx transports for proxies."""

    def __init__(self, options: FetchOptions, *, demand: Callable[[Origin], int] | None = None) -> None:
        self._options = options
        # Connections are bounded by the open-file limit, not by -c: a list of many hosts
        # needs a kept connection per host that has requests coming, far more than run at once.
        # ``demand`` (the scheduler's queue per host) tells the pool which ones those are.
        self._pool = ConnectionPool(
            connect_timeout=options.effective_connect_timeout,
            verify=not options.insecure,
            max_connections=max(options.concurrency, connection_budget()),
            http2=options.http2,
            demand=demand,
        )
        # Read and checked once, when the run is made (ValueError from fetch() for a bad one).
        self._environment_proxies = {} if options.proxy else environment_proxies()
        self._simple = not (options.proxy or self._environment_proxies)
        self._routed: dict[str, httpx.AsyncHTTPTransport] = {}

    @property
    def pool(self) -> ConnectionPool:
        return self._pool

    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        if self._simple:
            return self._pool.handle_async_request(request)
        return self._routed_request(request)

    async def _routed_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._proxy_for(request.url)
        if proxy is None:
            return await self._pool.handle_async_request(request)
        transport = self._routed.get(proxy)
        if transport is None:
            alpn = ["h2", "http/1.1"] if self._options.http2 else ["http/1.1"]
            transport = self._routed[proxy] = httpx.AsyncHTTPTransport(
                verify=tls_context(verify=not self._options.insecure, alpn=alpn),
                http2=self._options.http2,
                proxy=proxy,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=self._options.concurrency),
                trust_env=False,
            )
        # httpcore reads its deadlines from the request; the attempt's total deadline stays ours.
        connect = self._options.effective_connect_timeout
        extensions = {
            **request.extensions,
            "timeout": {"connect": connect, "read": None, "write": None, "pool": None},
        }
        timer: PhaseTimer | None = extensions.get(TIMER)
        if timer is not None:
            extensions["trace"] = ProxyPhases(timer)
        request.extensions = extensions
        try:
            return await transport.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
            raise _proxy_failure(exc, proxy_label(proxy), connect) from exc

    def _proxy_for(self, url: httpx.URL) -> str | None:
        if self._options.proxy:
            return self._options.proxy
        proxies = self._environment_proxies
        proxy = proxies.get(url.scheme) or proxies.get("all")
        # Not in typeshed, but documented and stable since Python 3.x began.
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if proxy and bypass(url.host, proxies):
            return None
        return proxy or None

    async def aclose(self) -> None:
        await self._pool.aclose()
        for transport in self._routed.values():
            await transport.aclose()


class ProxyPhases:
    """Fills a :class:`PhaseTimer` from httpcore's trace events, for a request through a proxy.

    httpcore calls it (its ``trace`` request extension) as each step starts and completes, which
    is where a proxied request's phases happen. What each phase means through a proxy:

    - ``dns`` stays None: the proxy resolves the origin's name (an HTTP proxy always; httpcore's
      SOCKS5 hands the proxy the name for ``socks5://`` as for ``socks5h://``). The lookup of the
      proxy's own name, if it has one, happens inside the TCP connect and is counted there.
    - ``connect``: from the TCP connect to the proxy until a byte stream to the origin is open:
      the proxy's own TLS for an ``https://`` proxy, and the ``CONNECT`` exchange or the SOCKS5
      handshake, are part of it (through a proxy, that is what connecting to the origin takes).
    - ``tls``: the handshake with the origin, inside the tunnel; None for ``http://`` origins.
    - ``sent`` / ``first_byte``: the request written, and the response head read (httpcore
      reports nothing earlier than the whole head).

    A request on a kept proxy connection (or tunnel) sees no connect events: ``connect`` and
    ``tls`` stay None, as in our pool. The ``CONNECT`` request's own exchange is not the
    request's: its send/receive events are skipped.
    """

    __slots__ = ("_clock", "_in_connect", "_opened", "_timer", "_tls_started")

    def __init__(self, timer: PhaseTimer, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._timer = timer
        self._clock = clock
        self._opened: float | None = None  # when the TCP connect to the proxy started, until the stream is open
        self._tls_started = 0.0
        self._in_connect = False  # between a CONNECT's send and the next request's

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        now = self._clock()
        # "connection.connect_tcp.started": the logger's last part, then the step and its state.
        where, _, step = event.partition(".")
        if step == "connect_tcp.started":
            self._opened = now
        elif step == "start_tls.started" and where != "connection":  # "connection": the proxy's own TLS
            self._stream_open(now)
            self._tls_started = now
        elif step == "start_tls.complete" and where != "connection":
            self._timer.tls = now - self._tls_started
        elif step == "send_request_headers.started":
            self._in_connect = info["request"].method == b"CONNECT"
            if not self._in_connect:
                self._stream_open(now)
        elif self._in_connect:
            pass
        elif step == "receive_response_headers.started":  # after the body was written
            self._timer.sent = now
        elif step == "receive_response_headers.complete":
            self._timer.first_byte = now

    def _stream_open(self, now: float) -> None:
        if self._opened is not None:
            self._timer.connect = now - self._opened
            self._opened = None


def _proxy_failure(exc: httpx.TransportError, label: str, connect_timeout: float) -> httpx.TransportError:
    """The failure of a proxied request, told as the proxy's when it was the proxy's.

    httpx says ``All connection attempts failed`` whether the proxy or the target was at fault;
    the target's TLS failures (through the tunnel) are left as they are, for ``classify`` to find.
    """
    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in causes:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(c, ssl.SSLError | ssl.CertificateError) for c in causes):
        return exc
    if isinstance(exc, httpx.ConnectTimeout):
        return httpx.ConnectTimeout(f"proxy {label}: no connection within {connect_timeout:g} s")
    if isinstance(exc, httpx.ProxyError):
        return httpx.ProxyError(f"proxy {label} refused the request: {exc}")
    detail = str(exc) or type(exc).__name__
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            detail = f"cannot resolve the proxy's name ({cause.strerror or cause})"
            break
        if isinstance(cause, OSError) and cause.errno:
            detail = os.strerror(cause.errno).lower()
            break
    return httpx.ConnectError(f"proxy {label}: {detail}")
