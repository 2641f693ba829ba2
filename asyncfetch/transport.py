"""A lean HTTP/1.1 connection pool behind httpx's transport interface.

httpx stays the request/response model and the test seam (any ``httpx.AsyncBaseTransport``,
respx's mock included, can stand in for this one), but its default pool scans every
connection on every request and churns connections past 20 keep-alive: at 500 in flight a
one-second job took 74 s here. This pool does the least work per request that HTTP/1.1
allows: one ``asyncio.Protocol`` per connection, llhttp (through httptools) to parse, idle
connections in per-origin stacks, no locks.

It raises httpx's exceptions (``ConnectError`` with the ``socket.gaierror`` or
``ssl.SSLError`` as its cause, ``ConnectTimeout``, ``ReadError``, ``RemoteProtocolError``),
so :func:`asyncfetch.errors.classify` sees one vocabulary whatever transport is in use.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, cast

import httptools
import httpx

from asyncfetch.http import DEFAULT_PORTS, IDEMPOTENT_METHODS, Origin, origin_of

if TYPE_CHECKING:
    from asyncfetch.h2conn import H2Pool

# Pause reading a connection when this much body is waiting for the reader.
_HIGH_WATER = 512 * 1024

# Request extension: a PhaseTimer the pool fills in (``--timings``); absent, nothing is timed.
TIMER = "asyncfetch.timer"
# Response extensions: the connection's peer ``(ip, port)``, and its ``ssl.SSLObject`` (or None).
REMOTE = "asyncfetch.remote"
SSL_OBJECT = "asyncfetch.ssl_object"


class PhaseTimer:
    """Where one request's time goes, filled in by the pool as each phase happens.

    Durations (``dns``, ``connect``, ``tls``) are seconds and stay None for a phase that did
    not happen on this request (a reused connection, an IP address, plain HTTP); ``sent`` and
    ``first_byte`` are ``time.perf_counter()`` readings.
    """

    __slots__ = ("connect", "dns", "first_byte", "sent", "tls")

    def __init__(self) -> None:
        self.dns: float | None = None
        self.connect: float | None = None
        self.tls: float | None = None
        self.sent: float | None = None
        self.first_byte: float | None = None


class Resolver:
    """getaddrinfo with a small time-bounded cache and one lookup in flight per host.

    A lookup runs in a task of its own: a request whose deadline passes stops waiting for it
    without cancelling it for the others. Failures are remembered briefly too, so a list with
    thousands of URLs on a dead domain asks the resolver once, not thousands of times.
    """

    def __init__(self, *, ttl: float = 60.0, failure_ttl: float = 10.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._max_entries = max_entries
        self._cache: OrderedDict[tuple[str, int], tuple[float, list[tuple[int, str]] | socket.gaierror]] = OrderedDict()
        self._pending: dict[tuple[str, int], asyncio.Task[list[tuple[int, str]]]] = {}

    async def resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        """``[(family, address), ...]`` for ``host``; raises ``socket.gaierror``."""
        literal = _ip_literal(host)
        if literal is not None:
            return [literal]
        key = (host, port)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            answer = hit[1]
            if isinstance(answer, socket.gaierror):
                raise socket.gaierror(answer.errno, answer.strerror)
            return answer
        lookup = self._pending.get(key)
        if lookup is None:
            lookup = self._pending[key] = asyncio.ensure_future(self._lookup(key))
            lookup.add_done_callback(_consume_outcome)
        return await asyncio.shield(lookup)

    async def _lookup(self, key: tuple[str, int]) -> list[tuple[int, str]]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(*key, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            self._remember(key, self._failure_ttl, exc)
            raise
        finally:
            del self._pending[key]
        addresses = list(dict.fromkeys((int(family), str(sockaddr[0])) for family, _, _, _, sockaddr in infos))
        self._remember(key, self._ttl, addresses)
        return addresses

    def _remember(self, key: tuple[str, int], ttl: float, answer: list[tuple[int, str]] | socket.gaierror) -> None:
        self._cache[key] = (time.monotonic() + ttl, answer)
        self._cache.move_to_end(key)
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)


def _consume_outcome(task: asyncio.Task[list[tuple[int, str]]]) -> None:
    # Every waiter may have given up (deadlines): mark the exception as seen all the same.
    if not task.cancelled():
        task.exception()


@functools.lru_cache(maxsize=4096)
def _ip_literal(host: str) -> tuple[int, str] | None:
    if not host or not (host[0].isdigit() or ":" in host):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET6 if address.version == 6 else socket.AF_INET, host)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: sends a request, parses its response as bytes arrive."""

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self._loop = loop  # kept: asyncio.get_running_loop() costs a getpid() system call
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.remote: tuple[str, int] | None = None  # the peer, set by the pool once connected
        self.ssl_object: object = None
        self._timer: PhaseTimer | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.http_version = "HTTP/1.1"
        self.error: Exception | None = None
        self.got_bytes = False
        self._head = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Bytes nobody asked for (a server talking out of turn): the stream is unusable.
            self.close()
            return
        if not self.got_bytes:
            self.got_bytes = True
            if self._timer is not None:
                self._timer.first_byte = time.perf_counter()
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is None or self.complete or self.error is not None:
            return
        if exc is not None:
            self._fail(httpx.ReadError(f"connection broken: {exc}"))
        elif self.headers_done and _delimited_by_close(self.headers):
            self._parser = None
            self.complete = True
            self._wake()
        elif self.headers_done:
            self._fail(httpx.RemoteProtocolError("server closed the connection before the body was complete"))
        else:
            self._fail(httpx.RemoteProtocolError("server closed the connection without sending a response"))

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser is None or self.headers_done:
            self.keep_alive = False  # a second response nobody asked for: do not reuse
            return
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # an interim response (100 Continue): the real one follows
            return
        self.status = status
        self.http_version = "HTTP/" + parser.get_http_version()
        self.keep_alive = parser.should_keep_alive()
        self.headers_done = True
        if self._head or status in (204, 304):
            self._finish()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.keep_alive = False
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and not self.closed and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.headers_done:
            self._finish()
            self._wake()

    # -- used by the pool and the body stream ------------------------------------------------
    def _finish(self) -> None:
        self.complete = True
        self._parser = None

    def _fail(self, error: Exception) -> None:
        self.error = error
        self._parser = None
        self.keep_alive = False
        self._wake()
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def send(self, head: bytes, body: bytes, *, is_head: bool, timer: PhaseTimer | None = None) -> None:
        """Write one request and wait until its response head has been parsed."""
        assert self.transport is not None
        if self.closed:
            raise httpx.RemoteProtocolError("connection closed before the request was sent")
        self._reset()
        self._head = is_head
        self._timer = timer
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(head + body if body else head)
        if timer is not None:
            timer.sent = time.perf_counter()
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The response body as it arrives, raw (not content-decoded)."""
        chunks = self._chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._paused and not self.closed and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                yield data
            elif self.complete:
                return
            elif self.error is not None:
                raise self.error
            else:
                await self._wait()

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        self._parser = None
        if self.transport is not None:
            self.transport.abort()  # no lingering FIN/TLS close_notify dance on a dead stream


class _ResponseBody(httpx.AsyncByteStream):
    """The body of one response; hands the connection back to the pool when done."""

    def __init__(self, pool: ConnectionPool, connection: _Connection) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        async for chunk in connection.body_chunks():
            yield chunk
        await self.aclose()

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class ConnectionPool(httpx.AsyncBaseTransport):
    """HTTP/1.1 over TCP or TLS with keep-alive, for any number of origins."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        verify: bool = True,
        max_connections: int = 100,
        keepalive_expiry: float = 5.0,
        resolver: Resolver | None = None,
        http2: bool = False,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._verify = verify
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._resolver = resolver or Resolver()
        self._ssl_context: ssl.SSLContext | None = None
        self._h2_context: ssl.SSLContext | None = None
        # With http2, HTTPS requests go by way of the HTTP/2 pool, which hands this pool the
        # connections whose server chose HTTP/1.1.
        self._h2: H2Pool | None = None
        if http2:
            from asyncfetch.h2conn import H2Pool  # only with http2: h2 is not loaded for every run

            self._h2 = H2Pool(self, self._open_negotiated, keepalive_expiry=keepalive_expiry)
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._idle_order: OrderedDict[_Connection, None] = OrderedDict()
        self._active: set[_Connection] = set()
        self.connections_opened = 0

    # -- httpx.AsyncBaseTransport ----------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        origin = origin_of(request.url)
        if self._h2 is not None and scheme == "https":
            return await self._h2.handle_async_request(request, origin, await _body_of(request))
        return await self.send_on(request, origin, self.checkout(origin))

    async def send_on(self, request: httpx.Request, origin: Origin, connection: _Connection | None) -> httpx.Response:
        """Send ``request`` over HTTP/1.1 on ``connection`` (or a new one)."""
        head = _serialize_head(request)
        body = await _body_of(request)
        is_head = request.method == "HEAD"
        timer: PhaseTimer | None = request.extensions.get(TIMER)
        if connection is None:
            connection = await self._open(origin, timer)
        while True:
            self._active.add(connection)
            try:
                await connection.send(head, body, is_head=is_head, timer=timer)
                break
            except httpx.TransportError:
                self._discard(connection)
                # A kept-alive connection the server closed just as we reused it: nothing of
                # the request was answered, so an idempotent request goes again on a new one.
                if connection.reused and not connection.got_bytes and request.method in IDEMPOTENT_METHODS:
                    connection = await self._open(origin, timer)
                    continue
                raise
            except BaseException:
                self._discard(connection)
                raise
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_ResponseBody(self, connection),
            extensions={
                "http_version": connection.http_version.encode("ascii"),
                REMOTE: connection.remote,
                SSL_OBJECT: connection.ssl_object,
            },
            request=request,
        )

    async def aclose(self) -> None:
        for connection in [*self._idle_order, *self._active]:
            connection.close()
        if self._h2 is not None:
            self._h2.close()
        self._idle.clear()
        self._idle_order.clear()
        self._active.clear()

    # -- connections -------------------------------------------------------------------------
    def checkout(self, origin: Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        if not stack:
            return None
        expired_before = time.monotonic() - self._keepalive_expiry
        found = None
        while stack:
            connection = stack.pop()
            self._idle_order.pop(connection, None)
            if not connection.closed and connection.idle_since > expired_before:
                connection.reused = True
                found = connection
                break
            connection.close()
        if not stack:
            del self._idle[origin]  # millions of hosts must not leave millions of empty stacks
        return found

    def release(self, connection: _Connection) -> None:
        """Take a connection back after its response: keep it for reuse, or close it."""
        self._active.discard(connection)
        if not connection.reusable or self._max_connections == 0:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, deque()).append(connection)
        self._idle_order[connection] = None
        while self._idle_order and len(self._idle_order) + len(self._active) > self._max_connections:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        oldest, _ = self._idle_order.popitem(last=False)
        stack = self._idle[oldest.origin]
        stack.remove(oldest)
        if not stack:
            del self._idle[oldest.origin]
        oldest.close()

    def _discard(self, connection: _Connection) -> None:
        self._active.discard(connection)
        connection.close()

    async def _open(self, origin: Origin, timer: PhaseTimer | None = None) -> _Connection:
        loop = asyncio.get_running_loop()
        context = self._tls_context() if origin.scheme == "https" else None
        connection, remote, ssl_object = await self._connect(origin, timer, lambda: _Connection(origin, loop), context)
        assert isinstance(connection, _Connection)
        connection.remote, connection.ssl_object = remote, ssl_object
        return connection

    async def _open_negotiated(self, origin: Origin, timer: PhaseTimer | None) -> asyncio.Protocol:
        """A TLS connection offering ``h2, http/1.1``: an H2Connection, or a _Connection if the server chose 1.1."""
        from asyncfetch.h2conn import H2Connection, Negotiating

        loop = asyncio.get_running_loop()
        if self._h2_context is None:
            self._h2_context = tls_context(verify=self._verify, alpn=["h2", "http/1.1"])
        negotiating, remote, ssl_object = await self._connect(
            origin,
            timer,
            lambda: Negotiating(lambda: _Connection(origin, loop), lambda: H2Connection(origin, loop)),
            self._h2_context,
        )
        assert isinstance(negotiating, Negotiating)
        chosen = negotiating.chosen
        assert chosen is not None  # the TLS handshake is done: ALPN has said
        chosen.remote, chosen.ssl_object = remote, ssl_object
        return chosen

    async def _connect(
        self,
        origin: Origin,
        timer: PhaseTimer | None,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext | None,
    ) -> tuple[asyncio.Protocol, tuple[str, int], object]:
        """A new connection's protocol, its peer, and its ``ssl.SSLObject`` (None without TLS)."""
        # Room first: idle connections (to other hosts) give way, oldest first, so that open
        # connections stay within max_connections (file descriptors!) whenever they can.
        while self._idle_order and len(self._idle_order) + len(self._active) >= self._max_connections:
            self._evict_oldest()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                started = time.perf_counter() if timer is not None else 0.0
                try:
                    addresses = await self._resolver.resolve(origin.host, origin.port)
                except socket.gaierror as exc:
                    raise httpx.ConnectError(f"cannot resolve {origin.host}: {exc.strerror or exc}") from exc
                if timer is not None:
                    resolved = time.perf_counter()
                    timer.dns = None if _ip_literal(origin.host) else resolved - started
                    started = resolved  # connect time counts every address tried
                last_error: OSError | None = None
                transport: asyncio.BaseTransport
                for family, address in addresses:
                    try:
                        if timer is None:
                            transport, protocol = await loop.create_connection(
                                factory,
                                address,
                                origin.port,
                                family=family,
                                ssl=context,
                                server_hostname=origin.host if context is not None else None,
                            )
                        else:
                            transport, protocol = await _connect_timed(
                                loop, origin, family, address, context, started, timer, factory
                            )
                    except ssl.SSLError as exc:
                        raise httpx.ConnectError(f"TLS handshake with {origin.host} failed: {exc}") from exc
                    except ssl.CertificateError as exc:
                        raise httpx.ConnectError(f"TLS certificate of {origin.host} rejected: {exc}") from exc
                    except OSError as exc:
                        last_error = exc
                        continue
                    self.connections_opened += 1
                    ssl_object = transport.get_extra_info("ssl_object") if context is not None else None
                    return protocol, (address, origin.port), ssl_object
                detail = last_error.strerror if last_error is not None and last_error.strerror else last_error
                raise httpx.ConnectError(f"cannot connect to {origin.host}:{origin.port}: {detail}") from last_error
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"no connection to {origin.host}:{origin.port} within {self._connect_timeout:g} s"
            ) from exc

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = tls_context(verify=self._verify, alpn=["http/1.1"])
        return self._ssl_context


async def _connect_timed(
    loop: asyncio.AbstractEventLoop,
    origin: Origin,
    family: int,
    address: str,
    context: ssl.SSLContext | None,
    started: float,
    timer: PhaseTimer,
    factory: Callable[[], asyncio.Protocol],
) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """Connect as ``_connect`` does, in two steps (TCP, then TLS) so that each can be timed."""
    transport, connection = await loop.create_connection(factory, address, origin.port, family=family)
    connected = time.perf_counter()
    timer.connect = connected - started
    if context is None:
        return transport, connection
    try:
        secure = await loop.start_tls(transport, connection, context, server_hostname=origin.host)
    except BaseException:
        transport.abort()
        raise
    if secure is None:  # only when the transport closed under us
        raise ConnectionResetError("connection closed during the TLS handshake")
    # The protocol meets its TLS transport (start_tls does not call connection_made): with ALPN
    # in play this is where the protocol is chosen.
    connection.connection_made(secure)
    timer.tls = time.perf_counter() - connected
    return secure, connection


def tls_context(*, verify: bool, alpn: list[str]) -> ssl.SSLContext:
    """A client TLS context: certifi's roots (or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), or none with -k."""
    context = httpx.create_ssl_context(verify=verify)
    context.set_alpn_protocols(alpn)
    return context


async def _body_of(request: httpx.Request) -> bytes:
    try:
        return request.content
    except httpx.RequestNotRead:
        return await request.aread()


def _delimited_by_close(headers: list[tuple[bytes, bytes]]) -> bool:
    """A body with neither Content-Length nor chunked coding ends when the server closes."""
    return not any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


def _serialize_head(request: httpx.Request) -> bytes:
    """The request line and headers, refusing bytes that would split the message."""
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    lines = len(request.headers.raw) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise httpx.LocalProtocolError("a header name or value contains a line break")
    return head
