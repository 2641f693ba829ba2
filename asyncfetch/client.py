"""The one client all workers share: a transport that routes each request to the right pool.

Requests go to :class:`~asyncfetch.transport.ConnectionPool`, our own pool: HTTP/1.1, and with
``--http2`` HTTP/2 over TLS where the server chooses it by ALPN. Requests through a proxy (from
``--proxy`` or the ``*_PROXY`` variables) go to an ``httpx.AsyncHTTPTransport`` made for that
purpose. Without a proxy, routing costs one attribute test per request.
"""

from __future__ import annotations

import urllib.request

import httpx

from asyncfetch.options import FetchOptions
from asyncfetch.transport import ConnectionPool, tls_context


class Client(httpx.AsyncBaseTransport):
    """Routes requests between the fast pool and httpx transports for proxies and HTTP/2."""

    def __init__(self, options: FetchOptions) -> None:
        self._options = options
        self._pool = ConnectionPool(
            connect_timeout=options.effective_connect_timeout,
            verify=not options.insecure,
            max_connections=max(options.concurrency, 16),
            http2=options.http2,
        )
        self._environment_proxies = {} if options.proxy else urllib.request.getproxies_environment()
        self._simple = not (options.proxy or self._environment_proxies)
        self._routed: dict[str | None, httpx.AsyncHTTPTransport] = {}

    @property
    def pool(self) -> ConnectionPool:
        return self._pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._simple:
            return await self._pool.handle_async_request(request)
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
        request.extensions = {
            **request.extensions,
            "timeout": {"connect": connect, "read": None, "write": None, "pool": None},
        }
        return await transport.handle_async_request(request)

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
