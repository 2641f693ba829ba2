"""A lean HTTP/1.1 connection pool behind httpx's transport interface.

httpx stays the request/response model and the test seam (any ``httpx.AsyncBaseTransport``,
respx's mock included, can stand in for this one), but its default pool scans every
connection on every request and churns connections past 20 keep-alive: at 500 in flight a
one-second job took 74 s here. This pool does the least work per request that HTTP/1.1
allows: one ``asyncio.Protocol`` per connection, llhttp (through httptools) to parse, idle
connections in per-origin stacks, no locks.

Connection policy, for lists of many hosts: a connection whose response is complete stays
open for the next request to its origin (up to ``keepalive_expiry`` idle). Open connections
are bounded by the open-file limit (``ulimit -n`` less a reserve), not by the concurrency:
a host with requests still queued keeps its connection even while every worker is busy
elsewhere. Idle ones are bounded by ``max_idle`` (memory), and beyond ``speculative_idle``
only a host with requests queued keeps one. When a bound is reached, the
idle connection closed is, among the oldest: a dead or expired one, else one whose host has
nothing queued in the scheduler (``demand``), else the oldest. New connections try each
address of a host in turn, the next one starting when the previous fails or has not
connected within ``happy_eyeballs_delay`` (RFC 8305).

It raises httpx's exceptions (``ConnectError`` with the ``socket.gaierror`` or
``ssl.SSLError`` as its cause, ``ConnectTimeout``, ``ReadError``, ``RemoteProtocolError``),
so :func:`asyncfetch.errors.classify` sees one vocabulary whatever transport is in use.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import select
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import httptools
import httpx

from asyncfetch.http import DEFAULT_PORTS, IDEMPOTENT_METHODS, Origin, origin_of
from asyncfetch.tlssession import SessionCache

if TYPE_CHECKING:
    from asyncfetch.h2conn import H2Pool

# Pause reading a connection when this much body is waiting for the reader.
_HIGH_WATER = 512 * 1024
# File descriptors left for what is not a connection (input, output, the loop, DNS sockets).
FD_RESERVE = 64
# Idle connections kept at most, for memory: an idle TLS connection holds 40-60 KB of heap
# here (OpenSSL's state, its buffers, ours), so 1,024 of them stay under ~60 MB.
MAX_IDLE = 1024
# Plain bytes taken from the TLS layer per read call (a TLS record holds at most 16 KiB), and
# encrypted bytes given to it at a time (a full record and its header).
_TLS_READ = 64 * 1024
_TLS_FEED = 16 * 1024 + 512
# Idle connections kept for hosts with nothing queued (yet: the input is read ahead only so far).
SPECULATIVE_IDLE = 256
# Eviction looks at this many of the oldest idle connections for one nothing queued needs.
_EVICTION_SCAN = 64

# What a server may send before the final response's body starts: status lines, headers and any
# interim (1xx) responses, in bytes and in counts. Past a bound the response is a protocol error,
# so a server that sends headers forever costs this much memory and no more. 256 KiB is the
# bound browsers put on response heads (Chromium's), far beyond what real sites send.
MAX_HEAD_BYTES = 256 * 1024
MAX_HEADERS = 1000
MAX_INTERIM_RESPONSES = 100


# What a dial makes: an HTTP/1.1 connection, or (with --http2) whichever protocol ALPN chose.
_P = TypeVar("_P", bound=asyncio.Protocol)


class _ResponseRefused(Exception):
    """Raised inside a parser callback to stop parsing once the response is known to be unusable."""


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

    Only addresses this machine can reach are asked for: ``AI_ADDRCONFIG``, and IPv4 alone
    when there is no route to the IPv6 internet (glibc's ``AI_ADDRCONFIG`` ignores only
    127.0.0.1 and ::1, so a host with other loopback addresses or a bare loopback still asks
    for AAAA records it could never use: twice the queries on every new host).
    """

    def __init__(self, *, ttl: float = 60.0, failure_ttl: float = 10.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._max_entries = max_entries
        self._cache: OrderedDict[tuple[str, int], tuple[float, list[tuple[int, str]] | socket.gaierror]] = OrderedDict()
        self._pending: dict[tuple[str, int], asyncio.Task[list[tuple[int, str]]]] = {}
        self._family: int | None = None  # decided on the first lookup: see _lookup_family

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
        if self._family is None:
            self._family = _lookup_family()
        try:
            try:
                infos = await _getaddrinfo(*key, self._family)
            except socket.gaierror as exc:
                if self._family == socket.AF_UNSPEC or exc.errno != _EAI_NODATA:
                    raise
                # The name exists but has no IPv4 address: let its IPv6 ones (::1 in /etc/hosts,
                # a local network's) have their chance. A dead name (NXDOMAIN) is not asked twice.
                infos = await _getaddrinfo(*key, socket.AF_UNSPEC)
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


async def _getaddrinfo(host: str, port: int, family: int) -> list[tuple[Any, ...]]:
    """The system resolver (in the loop's thread pool), asked for stream addresses this host can use."""
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)


_EAI_NODATA = getattr(socket, "EAI_NODATA", -5)
# Any global unicast address serves: connecting a UDP socket only asks the routing table.
_IPV6_PROBE = "2001:db8::1"


def _lookup_family() -> int:
    """AF_UNSPEC when this machine has a route to the IPv6 internet, else AF_INET.

    A UDP ``connect`` sends nothing: it fails at once with ENETUNREACH when no route exists.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.connect((_IPV6_PROBE, 53))
    except OSError:
        return socket.AF_INET
    return socket.AF_UNSPEC


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
    """One HTTP/1.1 connection: sends a request, parses its response as bytes arrive.

    Over TLS it does the TLS itself, an ``ssl.SSLObject`` between memory buffers on a plain TCP
    transport, instead of asking the loop for a TLS transport: the loop's keeps a 256 KiB read
    buffer per connection, and whatever part of it a large body once touched stays resident
    for as long as the connection is kept (280 KiB per idle connection after a 100 KB body
    here, against ~20 KiB this way). It also lets a new connection resume a TLS session.
    """

    # Slots, not a __dict__: thousands of connections are open at once (W4: 5,000), and past a
    # size the dict of this many attributes costs ~1 KB more per connection than slots do.
    __slots__ = (
        "_buffered",
        "_chunks",
        "_fd",
        "_head",
        "_head_bytes",
        "_interim",
        "_loop",
        "_parser",
        "_paused",
        "_timer",
        "_tls_in",
        "_tls_out",
        "_waiter",
        "closed",
        "complete",
        "error",
        "got_bytes",
        "handshake",
        "headers",
        "headers_done",
        "http_version",
        "idle_since",
        "keep_alive",
        "origin",
        "remote",
        "reused",
        "session_captured",
        "ssl_object",
        "status",
        "transport",
    )

    def __init__(
        self,
        origin: Origin,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.origin = origin
        self._loop = loop  # kept: asyncio.get_running_loop() costs a getpid() system call
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.remote: tuple[str, int] | None = None  # the peer, set by the pool once connected
        self._timer: PhaseTimer | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.ssl_object: ssl.SSLObject | None = None
        self._tls_in: ssl.MemoryBIO | None = None
        self._tls_out: ssl.MemoryBIO | None = None
        # Done once the TLS handshake is over (or failed); None on plain TCP.
        self.handshake: asyncio.Future[None] | None = None
        self.session_captured = False
        self._fd: int | None = None
        if context is not None:
            self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.ssl_object = context.wrap_bio(
                self._tls_in, self._tls_out, server_hostname=origin.host, session=session
            )
            self.handshake = loop.create_future()
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
        # A list, not a deque: an empty deque takes ~760 bytes (its first block is allocated
        # with it), a list 56, and there is one per connection (W4: 5,000 in flight).
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._head_bytes = 0
        self._interim = 0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = cast(asyncio.Transport, transport)
        if self.handshake is not None:
            self._handshake_step()  # sends the ClientHello

    def data_received(self, data: bytes) -> None:
        if self._tls_in is not None:  # our own TLS (not the loop's, as under HTTP/2's ALPN)
            decrypted = self._decrypt(data)
            if not decrypted:
                return
            data = decrypted
        parser = self._parser
        if parser is None:
            # Bytes nobody asked for (a server talking out of turn): the stream is unusable.
            self.close()
            return
        if not self.got_bytes:
            self.got_bytes = True
            if self._timer is not None:
                self._timer.first_byte = time.perf_counter()
        rest = b""
        if not self.headers_done:
            # Only MAX_HEAD_BYTES of head are parsed: the parser itself would buffer any amount.
            room = MAX_HEAD_BYTES - self._head_bytes
            if len(data) > room:
                data, rest = data[:room], data[room:]
            self._head_bytes += len(data)
        try:
            parser.feed_data(data)
            if rest and self.error is None:
                if not self.headers_done:
                    self._fail(httpx.RemoteProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes"))
                    return
                parser.feed_data(rest)
        except httptools.HttpParserError as exc:
            if self.error is not None:
                return  # a callback refused the response and said why
            if self.complete:
                self.close()  # junk after a complete response: the response stands, the stream does not
            else:
                self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        handshake = self.handshake
        if handshake is not None and not handshake.done():
            handshake.set_exception(ConnectionResetError("connection closed during the TLS handshake"))
            handshake.exception()  # retrieved here: nobody may be waiting any more
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

    # -- TLS ---------------------------------------------------------------------------------
    def _handshake_step(self) -> None:
        tls = self.ssl_object
        handshake = self.handshake
        assert tls is not None
        assert handshake is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            if not handshake.done():
                handshake.set_exception(exc)
            self.close()
            return
        # Done: our last flight (TLS 1.3's Finished) waits in the BIO and leaves with the
        # request, which follows at once: one write, one packet and one wake-up of the
        # server fewer per new connection. Anything the server sends first flushes it too.
        if not handshake.done():
            handshake.set_result(None)

    def _decrypt(self, data: bytes) -> bytes:
        """The application data in ``data`` (TLS records), with the handshake moved on first."""
        tls_in, tls = self._tls_in, self.ssl_object
        assert tls_in is not None
        assert tls is not None
        handshake = self.handshake
        if handshake is not None and not handshake.done():
            tls_in.write(data)
            self._handshake_step()
            if not handshake.done() or handshake.exception() is not None or not tls_in.pending:
                return b""  # (done and nothing more: our Finished waits for the request)
            data = b""
        chunks = []
        view = memoryview(data)
        offset = 0
        try:
            while True:
                # In steps of about one TLS record: a memory BIO never shrinks, and one fed a
                # whole 256 KiB read would keep that much for the life of the connection.
                if offset < len(view):
                    tls_in.write(view[offset : offset + _TLS_FEED])
                    offset += _TLS_FEED
                try:
                    while chunk := tls.read(_TLS_READ):
                        chunks.append(chunk)
                except ssl.SSLWantReadError:
                    if offset >= len(view):
                        break
                    continue
                # b"": the server's close_notify (the ssl module reads a clean shutdown as
                # the end of the stream). What came before stands; the connection ends.
                self._tls_closed()
                break
        except ssl.SSLZeroReturnError:
            self._tls_closed()
        except ssl.SSLError as exc:
            self._fail(httpx.ReadError(f"TLS error: {exc}"))
            return b""
        if self._tls_out is not None and self._tls_out.pending:
            self._flush_tls()  # a reply the records asked for (a key update)
        return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    @property
    def owns_tls(self) -> bool:
        """TLS done by this connection itself (its ssl_object is ours to ask for a session)."""
        return self._tls_in is not None

    def _tls_closed(self) -> None:
        if self.transport is not None and not self.closed:
            self._loop.call_soon(self.transport.close)  # after the bytes before it are parsed

    def _flush_tls(self) -> None:
        tls_out = self._tls_out
        if tls_out is not None and tls_out.pending and self.transport is not None and not self.closed:
            self.transport.write(tls_out.read())

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        tls = self.ssl_object
        if tls is None or self._tls_in is None:  # plain, or TLS done by the loop's transport
            self.transport.write(data)
            return
        tls.write(data)
        self._flush_tls()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.headers_done:
            # Bytes after the end of the response (a body longer than its Content-Length, a
            # second response): the stream is out of step with our requests, never reuse it.
            self.close()
            raise _ResponseRefused("bytes after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_HEADERS:
            self._refuse(f"more than {MAX_HEADERS} response headers")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser is None or self.headers_done:
            self.keep_alive = False  # a second response nobody asked for: do not reuse
            return
        status = parser.get_status_code()
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            self._refuse(f"HTTP/{version} status line on an HTTP/1.1 connection")
        if not 100 <= status <= 599:
            # RFC 9110 §15: a status code outside 100..599 is invalid (the parser takes 000..999).
            self._refuse(f"invalid status code {status}")
        if 100 <= status < 200 and status != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                self._refuse(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses")
            self.headers = []  # an interim response (100 Continue): the real one follows
            return
        self.status = status
        self.http_version = "HTTP/" + version
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

    def _refuse(self, reason: str) -> NoReturn:
        """Fail the response as a protocol error from inside a parser callback, and stop the parser."""
        self._fail(httpx.RemoteProtocolError(reason))
        raise _ResponseRefused(reason)

    def _fail(self, error: Exception) -> None:
        self.error = error
        self._parser = None
        self.keep_alive = False
        self._wake()
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # not cancelled with its task
                waiter.set_result(None)

    def wait(self) -> asyncio.Future[None]:
        """To await until the parser has more to say (head, body bytes, the end, or an error).

        A future, not a coroutine: it is awaited twice per response, and a coroutine would be
        one more frame to make and to resume each time.
        """
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def _readable(self) -> bool:
        """Whether bytes (or the server's close) wait unread in the socket."""
        fd = self._fd
        if fd is None:
            assert self.transport is not None
            sock = self.transport.get_extra_info("socket")
            if sock is None:
                return False
            fd = self._fd = sock.fileno()  # kept: not get_extra_info and fileno at every reuse
        # A poll object per check, not one kept per connection: ~320 bytes each, thousands idle.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    async def send(self, head: bytes, body: bytes, *, is_head: bool, timer: PhaseTimer | None = None) -> None:
        """Write one request and wait until its response head has been parsed."""
        assert self.transport is not None
        if self.closed:
            raise httpx.RemoteProtocolError("connection closed before the request was sent")
        self._reset()
        if self.reused and self._readable():
            # An idle HTTP/1.1 connection has nothing to say: bytes waiting on it are the tail of
            # the last response (a body longer than its Content-Length) or the server's close.
            # Either way it is out of step; nothing of this request was sent.
            self.close()
            raise httpx.RemoteProtocolError("the server sent bytes on an idle kept-alive connection")
        self._head = is_head
        self._timer = timer
        self._parser = httptools.HttpResponseParser(self)
        self._write(head + body if body else head)
        if timer is not None:
            timer.sent = time.perf_counter()
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self.wait()

    def take_body(self) -> bytes | None:
        """The body bytes parsed since the last call, raw (not content-decoded); None if none yet."""
        chunks = self._chunks
        if not chunks:
            return None
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and not self.closed and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        self.keep_alive = False
        self._parser = None
        if self.transport is not None:
            self.transport.abort()  # no lingering FIN/TLS close_notify dance on a dead stream


class _ResponseBody(httpx.AsyncByteStream):
    """The body of one response as it arrives; hands the connection back to the pool when done.

    Its own async iterator, not an async generator: the loop registers each generator in a
    weak set and calls a hook for it, a cost per response for nothing here.
    """

    def __init__(self, pool: ConnectionPool, connection: _Connection) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection

    def __aiter__(self) -> _ResponseBody:
        if self._connection is None:
            raise httpx.StreamClosed()
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise StopAsyncIteration
        while True:
            data = connection.take_body()
            if data is not None:
                return data
            if connection.complete:
                self._release()
                raise StopAsyncIteration
            if connection.error is not None:
                raise connection.error
            await connection.wait()

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class ConnectionPool(httpx.AsyncBaseTransport):
    """HTTP/1.1 over TCP or TLS with keep-alive, for any number of origins.

    ``max_connections`` bounds open connections (idle, busy and being opened: file
    descriptors), ``max_idle`` the idle ones (memory); ``demand(origin)`` says how many
    requests are still queued for an origin, so that eviction spares what they will need.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        verify: bool = True,
        max_connections: int | None = None,
        max_idle: int = MAX_IDLE,
        speculative_idle: int = SPECULATIVE_IDLE,
        keepalive_expiry: float = 5.0,
        happy_eyeballs_delay: float = 0.25,
        resolver: Resolver | None = None,
        http2: bool = False,
        demand: Callable[[Origin], int] | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._verify = verify
        self._max_connections = connection_budget() if max_connections is None else max_connections
        self._max_idle = max_idle
        self._speculative_idle = speculative_idle
        self._keepalive_expiry = keepalive_expiry
        self._happy_eyeballs_delay = happy_eyeballs_delay
        self._resolver = resolver or Resolver()
        self._demand = demand
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
        self._opening = 0
        # TLS sessions to resume (no certificate to verify again): see asyncfetch.tlssession.
        self._sessions = SessionCache(share=verify)
        self.tls_resumed = 0
        self.connections_opened = 0
        self.connections_reused = 0  # requests sent on a connection an earlier response left open

    @property
    def max_connections(self) -> int:
        """The most connections open at once (idle, busy, or being opened)."""
        return self._max_connections

    @property
    def open_connections(self) -> int:
        """Connections open now: idle, busy, or being opened."""
        return len(self._idle_order) + len(self._active) + self._opening

    # -- httpx.AsyncBaseTransport ----------------------------------------------------------
    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]:
        # A plain function handing back the coroutine that does the work: no frame of its own
        # held for as long as each request is in flight (W4: 5,000 at once).
        scheme = request.url.scheme
        if scheme not in DEFAULT_PORTS:
            return _raise(httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}"))
        origin = origin_of(request.url)
        if self._h2 is not None and scheme == "https":
            return self._send_h2(request, origin)
        return self.send_on(request, origin)

    async def _send_h2(self, request: httpx.Request, origin: Origin) -> httpx.Response:
        assert self._h2 is not None
        return await self._h2.handle_async_request(request, origin, await _body_of(request))

    async def send_on(
        self, request: httpx.Request, origin: Origin, connection: _Connection | None = None
    ) -> httpx.Response:
        """Send ``request`` over HTTP/1.1 on ``connection``, else on an idle one to ``origin``, else a new one."""
        try:
            head = _serialize_head(request)
            body = await _body_of(request)
        except BaseException:
            if connection is not None:
                self.release(connection)  # handed in, nothing sent on it: back as it came
            raise
        is_head = request.method == "HEAD"
        timer: PhaseTimer | None = request.extensions.get(TIMER)
        if connection is None:
            # Taken here, once this coroutine runs: taken when it was made, a coroutine never
            # awaited would hold the connection out of the pool for good.
            connection = self.checkout(origin)
        if connection is None:
            connection = await self._open(origin, timer)
        else:
            self.connections_reused += 1
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
                    self.connections_reused -= 1
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
        demand = self._demand
        if connection.owns_tls and not connection.session_captured:
            self._keep_session(connection, demand is None or demand(connection.origin) > 0)
        if not connection.reusable or self._max_connections == 0 or self._max_idle == 0:
            connection.close()
            return
        # The queue is asked only past speculative_idle: not once per response on one host.
        if len(self._idle_order) >= self._speculative_idle and demand is not None and not demand(connection.origin):
            # Beyond a few, an idle connection is kept only for a host with requests queued: on a
            # list of one URL per host the rest would hold 40-60 KB each for nothing.
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, deque()).append(connection)
        self._idle_order[connection] = None
        while self._idle_order and (
            len(self._idle_order) > self._max_idle or self.open_connections > self._max_connections
        ):
            self._evict()

    def _keep_session(self, connection: _Connection, queued: bool) -> None:
        # After a whole response, not at the handshake: a TLS 1.3 server sends its session
        # tickets after the handshake, and they are read with the first response. Only when
        # it will serve: its host has requests queued, or its server address has no session
        # to share yet. Reading a session copies it through DER, certificate and all: ~14 %
        # of the client's CPU on a list of one URL per host if done for every connection.
        if not self._sessions.wants(connection.remote, for_origin=queued):
            return  # asked again at its next release
        connection.session_captured = True
        assert connection.ssl_object is not None
        self._sessions.keep(connection.ssl_object, connection.origin, connection.remote, for_origin=queued)

    def _evict(self) -> None:
        """Close the idle connection least likely to serve again.

        Among the oldest few: the first that is dead or past its keep-alive, else the first
        whose origin has no request queued, else the oldest. Looking at a few, not all, keeps
        eviction cheap with thousands idle; the oldest are the likeliest to be useless anyway.
        """
        expired_before = time.monotonic() - self._keepalive_expiry
        demand = self._demand
        victim = None
        for connection in itertools.islice(self._idle_order, _EVICTION_SCAN):
            if connection.closed or connection.idle_since <= expired_before:
                victim = connection
                break
            if victim is None and (demand is None or demand(connection.origin) == 0):
                victim = connection
                if demand is None:
                    break
        if victim is None:
            victim = next(iter(self._idle_order))
        del self._idle_order[victim]
        stack = self._idle[victim.origin]
        stack.remove(victim)
        if not stack:
            del self._idle[victim.origin]
        victim.close()

    def _discard(self, connection: _Connection) -> None:
        self._active.discard(connection)
        connection.close()

    def _open(self, origin: Origin, timer: PhaseTimer | None = None) -> Coroutine[Any, Any, _Connection]:
        """A new HTTP/1.1 connection, its TLS (if any) done by the connection itself."""
        context = self._tls_context() if origin.scheme == "https" else None

        # A plain function handing back _attempt's coroutine, not a coroutine awaiting it: one
        # frame fewer for each connection being opened (W4 opens 5,000 at once).
        def attempt(family: int, address: str, started: float) -> Coroutine[Any, Any, _Connection]:
            return self._attempt(origin, family, address, context, timer, started)

        return self._dial(origin, timer, attempt)

    async def _open_negotiated(self, origin: Origin, timer: PhaseTimer | None) -> asyncio.Protocol:
        """A TLS connection offering ``h2, http/1.1``: an H2Connection, or a _Connection if the server chose 1.1.

        The loop does this TLS (ALPN picks the protocol in ``connection_made``), not the
        connection: HTTP/2 needs it under either protocol.
        """
        from asyncfetch.h2conn import H2Connection, Negotiating

        loop = asyncio.get_running_loop()
        if self._h2_context is None:
            self._h2_context = tls_context(verify=self._verify, alpn=["h2", "http/1.1"])
        context = self._h2_context

        def factory() -> asyncio.Protocol:
            return Negotiating(lambda: _Connection(origin, loop), lambda: H2Connection(origin, loop))

        async def attempt(family: int, address: str, started: float) -> asyncio.Protocol:
            transport, negotiating = await _connect_loop_tls(
                loop, origin, family, address, context, started, timer, factory
            )
            assert isinstance(negotiating, Negotiating)
            chosen = negotiating.chosen
            assert chosen is not None  # the TLS handshake is done: ALPN has said
            chosen.remote, chosen.ssl_object = (address, origin.port), transport.get_extra_info("ssl_object")
            return chosen

        return await self._dial(origin, timer, attempt)

    async def _dial(
        self,
        origin: Origin,
        timer: PhaseTimer | None,
        attempt: Callable[[int, str, float], Coroutine[Any, Any, _P]],
    ) -> _P:
        """Room made, the name resolved, then ``attempt(family, address, started)`` on its addresses."""
        # Room first: idle connections give way (see _evict) so that open connections stay
        # within max_connections (file descriptors!) whenever they can.
        while self._idle_order and self.open_connections >= self._max_connections:
            self._evict()
        self._opening += 1
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
                if len(addresses) == 1:  # the usual case, awaited here: no _connect frame per connection
                    family, address = addresses[0]
                    try:
                        protocol = await attempt(family, address, started)
                    except OSError as exc:
                        raise _connect_error(origin, exc) from exc
                else:
                    protocol = await self._connect(origin, addresses, attempt, started)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"no connection to {origin.host}:{origin.port} within {self._connect_timeout:g} s"
            ) from exc
        finally:
            self._opening -= 1
        self.connections_opened += 1
        return protocol

    async def _connect(
        self,
        origin: Origin,
        addresses: list[tuple[int, str]],
        attempt: Callable[[int, str, float], Coroutine[Any, Any, _P]],
        started: float,
    ) -> _P:
        """A connection to the first of two or more ``addresses`` that answers (happy eyeballs, RFC 8305).

        The next address gets its attempt when the one before fails, or has not connected
        within ``happy_eyeballs_delay``: an address that swallows packets (a broken IPv6
        route, a dead server's blackholed address) costs that delay, not the connect timeout.
        Attempts still running when one wins are cancelled (and awaited: none outlives this
        call); a TLS failure ends them all (the same certificate would fail again).
        """
        waiting = deque(_interleave(addresses))
        running: set[asyncio.Task[_P]] = set()
        last_error: OSError | None = None
        try:
            while waiting or running:
                if waiting:
                    family, address = waiting.popleft()
                    running.add(asyncio.create_task(attempt(family, address, started)))
                done, running = await asyncio.wait(
                    running,
                    timeout=self._happy_eyeballs_delay if waiting else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for finished in done:
                    error = finished.exception()
                    if error is None:
                        return finished.result()
                    if not isinstance(error, OSError):
                        raise error
                    last_error = error
        finally:
            for loser in running:
                loser.cancel()
            if running:
                # A loser that connected while being cancelled is closed, not leaked.
                for outcome in await asyncio.gather(*running, return_exceptions=True):
                    close = getattr(outcome, "close", None)
                    if isinstance(outcome, asyncio.Protocol) and close is not None:
                        close()
        assert last_error is not None
        raise _connect_error(origin, last_error) from last_error

    async def _attempt(
        self,
        origin: Origin,
        family: int,
        address: str,
        context: ssl.SSLContext | None,
        timer: PhaseTimer | None = None,
        started: float = 0.0,
    ) -> _Connection:
        """One TCP (+ TLS) connection to one address; TLS failures become ``httpx.ConnectError``.

        With a ``timer``, ``connect`` is counted from ``started`` (every address tried) and
        ``tls`` from the TCP connection to the end of the handshake.
        """
        loop = asyncio.get_running_loop()
        session, shared = self._sessions.offer(origin, address) if context is not None else (None, False)
        _, connection = await loop.create_connection(
            lambda: _Connection(origin, loop, context, session), address, origin.port, family=family
        )
        connection.remote = (address, origin.port)
        connected = 0.0
        if timer is not None:
            connected = time.perf_counter()
            timer.connect = connected - started
        if connection.handshake is None:
            return connection
        try:
            await connection.handshake
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS handshake with {origin.host} failed: {exc}") from exc
        except ssl.CertificateError as exc:
            raise httpx.ConnectError(f"TLS certificate of {origin.host} rejected: {exc}") from exc
        finally:
            handshake = connection.handshake
            if not handshake.done() or handshake.cancelled() or handshake.exception() is not None:
                connection.close()  # cancelled (deadline, a faster address) or failed
        if timer is not None:
            timer.tls = time.perf_counter() - connected
        if connection.ssl_object is not None and connection.ssl_object.session_reused:
            self.tls_resumed += 1
        elif shared:
            self._sessions.refused(address, origin.port)  # full handshake: its session replaces it
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = tls_context(verify=self._verify, alpn=["http/1.1"])
        return self._ssl_context


async def _connect_loop_tls(
    loop: asyncio.AbstractEventLoop,
    origin: Origin,
    family: int,
    address: str,
    context: ssl.SSLContext,
    started: float,
    timer: PhaseTimer | None,
    factory: Callable[[], asyncio.Protocol],
) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
    """TCP then the loop's TLS, for ALPN's choice of protocol; timed in two steps with a ``timer``."""
    try:
        if timer is None:
            return await loop.create_connection(
                factory, address, origin.port, family=family, ssl=context, server_hostname=origin.host
            )
        transport, connection = await loop.create_connection(factory, address, origin.port, family=family)
        connected = time.perf_counter()
        timer.connect = connected - started
        try:
            secure = await loop.start_tls(transport, connection, context, server_hostname=origin.host)
        except BaseException:
            transport.abort()
            raise
        if secure is None:  # only when the transport closed under us
            raise ConnectionResetError("connection closed during the TLS handshake")
        # The protocol meets its TLS transport (start_tls does not call connection_made): with
        # ALPN in play this is where the protocol is chosen.
        connection.connection_made(secure)
        timer.tls = time.perf_counter() - connected
        return secure, connection
    except ssl.SSLError as exc:
        raise httpx.ConnectError(f"TLS handshake with {origin.host} failed: {exc}") from exc
    except ssl.CertificateError as exc:
        raise httpx.ConnectError(f"TLS certificate of {origin.host} rejected: {exc}") from exc


async def _raise(error: Exception) -> NoReturn:
    raise error


def _connect_error(origin: Origin, error: OSError) -> httpx.ConnectError:
    detail = error.strerror or error
    return httpx.ConnectError(f"cannot connect to {origin.host}:{origin.port}: {detail}")


def _interleave(addresses: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The resolver's order, alternating families (RFC 8305): one broken family cannot stall all."""
    first = addresses[0][0]
    same = [a for a in addresses if a[0] == first]
    other = [a for a in addresses if a[0] != first]
    mixed: list[tuple[int, str]] = []
    for pair in itertools.zip_longest(same, other):
        mixed.extend(a for a in pair if a is not None)
    return mixed


def connection_budget(reserve: int = FD_RESERVE) -> int:
    """How many connections the open-file limit leaves room for (``ulimit -n`` less ``reserve``)."""
    try:
        import resource
    except ImportError:  # not a Unix: no limit to read; the C runtime's default is 512
        return 512 - reserve
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4 * MAX_IDLE
    return max(16, soft - reserve)


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
