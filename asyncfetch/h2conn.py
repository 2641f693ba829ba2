"""HTTP/2 of our own: one connection per origin carrying many requests, none of them lost.

The ``h2`` library is the state machine; this module is the I/O around it in the style of
:mod:`asyncfetch.transport`: one ``asyncio.Protocol`` per connection, and h2's events as the
only changes of state. What httpcore's HTTP/2 connection gets wrong, and this one does not:

* A request the server did not process goes again on another connection, whatever its method,
  and without counting as a failed attempt (RFC 9113 §6.8, §8.7): a stream past a GOAWAY's
  ``last_stream_id``, or one reset with ``REFUSED_STREAM`` (:class:`Unprocessed` says how often).
  Stock nginx sends GOAWAY after ``keepalive_requests`` (1,000) streams, caddy after its idle
  timeout.
* A connection that received GOAWAY takes no new stream, but finishes the ones the server
  said it will process. (h2's own state machine refuses every frame after a GOAWAY, so the
  streams the server is still answering would fail: see :meth:`H2Connection._goaway`.)
* The server's ``MAX_CONCURRENT_STREAMS`` is honoured: a full connection gets a sibling.
* Flow control gives backpressure: received data is acknowledged only when the reader takes it,
  so each stream buffers at most its window, and a reader that goes away resets its stream.

It raises httpx's exceptions, like the HTTP/1.1 pool, so :func:`asyncfetch.errors.classify`
stays the one boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx

from asyncfetch.http import IDEMPOTENT_METHODS, Origin

# Loaded by transport.py only once it is itself loaded (and only with http2): no import cycle.
from asyncfetch.transport import REMOTE, SSL_OBJECT, TIMER, PhaseTimer

if TYPE_CHECKING:
    from asyncfetch.transport import ConnectionPool, _Connection

# Per-stream receive window: a stream buffers at most this much for a reader that is slow.
STREAM_WINDOW = 1024 * 1024
# The connection's receive window, shared by its streams (the RFC's default is 64 KiB, far too
# little for more than one big body at a time over a fast link).
CONNECTION_WINDOW = 16 * 1024 * 1024
# Streams per connection until the server's SETTINGS say otherwise (RFC 9113 suggests >= 100).
_INITIAL_MAX_STREAMS = 100
# A response header block larger than this ends the stream (a server sending headers forever).
MAX_HEADER_LIST_SIZE = 256 * 1024
# How often one request may be refused or left unprocessed before it counts as failed.
MAX_RESENDS = 10
# Origins known to have chosen HTTP/1.1 by ALPN: their requests skip waiting on a handshake.
_MAX_H1_ORIGINS = 10_000

# Headers that are about one HTTP/1.1 connection and are forbidden in HTTP/2 (RFC 9113 §8.2.2).
_CONNECTION_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)


class _ClientState(h2.connection.H2Connection):
    """h2's client state machine, except that a GOAWAY does not end the streams it spares.

    h2 moves its connection state to CLOSED on any GOAWAY and then rejects every later frame
    ("Invalid input RECV_HEADERS in state CLOSED"), even the responses to the streams the GOAWAY
    promised to process: those are the requests httpcore loses past nginx's keepalive_requests.
    Here the state stays as it was; :class:`H2Connection` keeps new streams off the connection
    by its ``goaway`` flag instead, and closes it when its last stream is done.
    """

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        state = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        self.state_machine.state = state
        return frames, events


class Unprocessed(Exception):
    """The server did not process this request (RFC 9113 §8.7): it may go again elsewhere.

    ``counted``: whether it counts against :data:`MAX_RESENDS`. A GOAWAY that spared earlier
    streams is a server at work that closed a connection as our stream went out (the race of
    an idle timeout): that may happen any number of times, bounded by the attempt's deadline.
    A refusal, or a GOAWAY that processed nothing, counts: a server that does nothing else.
    """

    def __init__(self, message: str, *, counted: bool = True) -> None:
        super().__init__(message)
        self.counted = counted


class _Stream:
    """One request/response exchange on an HTTP/2 connection."""

    __slots__ = ("chunks", "ended", "error", "headers", "id", "idempotent", "status", "timer", "unacked", "waiter")

    def __init__(self, stream_id: int, *, idempotent: bool, timer: PhaseTimer | None) -> None:
        self.id = stream_id
        self.timer = timer
        self.idempotent = idempotent
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.unacked = 0  # flow-controlled bytes buffered but not yet handed back to the server
        self.ended = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection over TLS: many streams, each a request and its response."""

    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._h2 = _ClientState(config)
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            },
        )
        self._streams: dict[int, _Stream] = {}
        self.max_streams = _INITIAL_MAX_STREAMS
        self.closed = False
        self.goaway = False  # the server said GOAWAY: no new streams on this connection
        self.completed = 0  # responses finished here: a connection that has served some is "reused"
        self.idle_since = time.monotonic()
        self.remote: tuple[str, int] | None = None  # the peer, set by the pool once connected
        self.ssl_object: object = None
        # Done when the server's first SETTINGS arrive (its stream limit among them), or it is gone.
        self.settled: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(httpx.RemoteProtocolError(f"HTTP/2 protocol error from the server: {exc}"))
            self.close()
            return
        for event in events:
            self._handle(event)
        self._flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.settled.done():
            self.settled.set_result(None)
        for stream in list(self._streams.values()):
            if stream.ended or stream.error is not None:
                continue
            if stream.status == 0 and stream.idempotent and self.completed > 0 and exc is None and not self.goaway:
                # A kept-alive connection the server closed without a word as we used it (the
                # stale keep-alive race, as in the HTTP/1.1 pool): nothing was answered, and
                # the request is idempotent, so it goes again on a new connection.
                stream.error = Unprocessed("the server closed an idle HTTP/2 connection")
            elif exc is not None:
                stream.error = httpx.ReadError(f"HTTP/2 connection broken: {exc}")
            elif stream.status == 0:
                stream.error = httpx.RemoteProtocolError("server closed the HTTP/2 connection without a response")
            else:
                stream.error = httpx.RemoteProtocolError("server closed the HTTP/2 connection before the body ended")
            stream.wake()

    # -- h2 events -------------------------------------------------------------------------
    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id or 0)
            if stream is None:
                # Data for a stream whose reader is gone: hand the window straight back.
                self._acknowledge(event.stream_id or 0, event.flow_controlled_length or 0)
                return
            if event.data:
                stream.chunks.append(event.data)
            stream.unacked += event.flow_controlled_length or 0
            stream.wake()
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                if stream.timer is not None:
                    stream.timer.first_byte = time.perf_counter()
                self._response_head(stream, event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream.ended = True
                if stream.status == 0 and stream.error is None:
                    stream.error = httpx.RemoteProtocolError("server ended the HTTP/2 stream without a response")
                stream.wake()
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None and not stream.ended and stream.error is None:
                code = event.error_code
                if code == h2.errors.ErrorCodes.REFUSED_STREAM and stream.status == 0:
                    stream.error = Unprocessed("the server refused the stream (REFUSED_STREAM)")
                else:
                    stream.error = httpx.RemoteProtocolError(f"server reset the HTTP/2 stream: {_code_name(code)}")
                stream.wake()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.wake()
            else:
                for stream in self._streams.values():
                    stream.wake()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.max_streams = self._h2.remote_settings.max_concurrent_streams
            if not self.settled.done():
                self.settled.set_result(None)
            for stream in self._streams.values():
                stream.wake()  # a new initial window may let a waiting body go on
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)

    def _response_head(self, stream: _Stream, headers: list[tuple[bytes, bytes]]) -> None:
        status = 0
        fields = []
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                fields.append((name, value))
        stream.status = status
        stream.headers = fields
        stream.wake()

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """GOAWAY: no new streams here; those past ``last_stream_id`` were not processed."""
        self.goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream in self._streams.values():
            if stream.id > last and not stream.ended and stream.error is None:
                stream.error = Unprocessed(
                    f"the server's GOAWAY left the stream unprocessed (last stream {last})", counted=last == 0
                )
                stream.wake()
        if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
            for stream in self._streams.values():
                if not stream.ended and stream.error is None:
                    stream.error = httpx.RemoteProtocolError(
                        f"server closed the HTTP/2 connection: {_code_name(event.error_code)}"
                    )
                    stream.wake()
            self.close()

    # -- used by the pool and the body stream ------------------------------------------------
    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def has_room(self) -> bool:
        return not (self.closed or self.goaway) and len(self._streams) < self.max_streams

    async def request(self, request: httpx.Request, body: bytes) -> httpx.Response:
        """Send one request on a new stream and wait for its response head."""
        timer: PhaseTimer | None = request.extensions.get(TIMER)
        stream = self._start(request, body, timer)
        if timer is not None:
            timer.sent = time.perf_counter()
        try:
            if body:
                await self._send_body(stream, body)
            await self._response_head_of(stream)
        except BaseException:
            self.forget(stream)
            raise
        return httpx.Response(
            stream.status,
            headers=stream.headers,
            stream=_ResponseBody(self, stream),
            extensions={"http_version": b"HTTP/2", REMOTE: self.remote, SSL_OBJECT: self.ssl_object},
            request=request,
        )

    async def _response_head_of(self, stream: _Stream) -> None:
        while stream.status == 0:
            if stream.error is not None:
                raise stream.error
            await self._wait(stream)

    def _start(self, request: httpx.Request, body: bytes, timer: PhaseTimer | None) -> _Stream:
        if not self.has_room():
            raise Unprocessed("the HTTP/2 connection takes no new streams")
        url = request.url
        authority = request.headers.get("host") or url.netloc.decode("ascii")
        headers = [
            (b":method", request.method.encode("ascii")),
            (b":authority", authority.encode("ascii")),
            (b":scheme", url.scheme.encode("ascii")),
            (b":path", url.raw_path),
        ]
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower in _CONNECTION_HEADERS or (lower == b"te" and value.lower() != b"trailers"):
                continue
            headers.append((lower, value))
        stream_id = self._h2.get_next_available_stream_id()
        try:
            self._h2.send_headers(stream_id, headers, end_stream=not body)
        except h2.exceptions.ProtocolError as exc:
            raise httpx.LocalProtocolError(f"cannot send the request over HTTP/2: {exc}") from exc
        stream = self._streams[stream_id] = _Stream(
            stream_id, idempotent=request.method in IDEMPOTENT_METHODS, timer=timer
        )
        self._flush()
        return stream

    async def _send_body(self, stream: _Stream, body: bytes) -> None:
        view = memoryview(body)
        while view:
            if stream.error is not None:
                raise stream.error
            if stream.ended:
                return  # answered before the body was all sent: the response is what counts
            room = min(self._h2.local_flow_control_window(stream.id), self._h2.max_outbound_frame_size)
            if room <= 0:
                await self._wait(stream)
                continue
            chunk, view = view[:room], view[room:]
            self._h2.send_data(stream.id, chunk.tobytes(), end_stream=not view)
            self._flush()

    async def _wait(self, stream: _Stream) -> None:
        stream.waiter = self._loop.create_future()
        try:
            await stream.waiter
        finally:
            stream.waiter = None

    async def body_chunks(self, stream: _Stream) -> AsyncIterator[bytes]:
        chunks = stream.chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                # Handed to the reader: now the server may send that much more.
                self._acknowledge(stream.id, stream.unacked)
                stream.unacked = 0
                self._flush()
                yield data
            elif stream.ended:
                return
            elif stream.error is not None:
                raise stream.error
            else:
                await self._wait(stream)

    def forget(self, stream: _Stream) -> None:
        """The reader is done with ``stream``: reset it if the server is still sending."""
        if self._streams.pop(stream.id, None) is None:
            return
        if stream.ended:
            self.completed += 1
        elif not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):  # already closed on h2's side (reset by the server)
                self._h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
        if stream.unacked:
            self._acknowledge(stream.id, stream.unacked)
        self._flush()
        if not self._streams:
            self.idle_since = time.monotonic()
            if self.goaway and not self.closed:
                self.close()  # nothing left to finish here

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):  # going away: windows no longer matter
                self._h2.acknowledge_received_data(size, stream_id)

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        transport = self.transport
        # Not once the transport is closing (the server's EOF): uvloop warns of each such write.
        if data and transport is not None and not self.closed and not transport.is_closing():
            transport.write(data)

    def _fail_all(self, error: Exception) -> None:
        for stream in self._streams.values():
            if not stream.ended and stream.error is None:
                stream.error = error
                stream.wake()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _code_name(code: object) -> str:
    return code.name if isinstance(code, h2.errors.ErrorCodes) else f"error code {code}"


class _ResponseBody(httpx.AsyncByteStream):
    """The body of one HTTP/2 response; resets the stream if the reader leaves early."""

    def __init__(self, connection: H2Connection, stream: _Stream) -> None:
        self._connection = connection
        self._stream: _Stream | None = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._stream
        if stream is None:
            raise httpx.StreamClosed()
        async for chunk in self._connection.body_chunks(stream):
            yield chunk
        await self.aclose()

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._connection.forget(stream)


class Negotiating(asyncio.Protocol):
    """Stands in for a new TLS connection's protocol until ALPN says which one the server chose.

    ``connection_made`` comes after the handshake: it builds the HTTP/2 or the HTTP/1.1
    connection and hands it the transport before any byte of the server's arrives, so the
    TLS connect happens once whatever the server speaks.
    """

    def __init__(self, make_h1: Callable[[], _Connection], make_h2: Callable[[], H2Connection]) -> None:
        self._make_h1 = make_h1
        self._make_h2 = make_h2
        self.chosen: H2Connection | _Connection | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or self.chosen is not None:
            return  # the TCP step of a timed connect: the pool calls again with the TLS transport
        alpn = ssl_object.selected_alpn_protocol()
        chosen = self.chosen = self._make_h2() if alpn == "h2" else self._make_h1()
        transport.set_protocol(chosen)
        chosen.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            chosen.data_received(data)

    def data_received(self, data: bytes) -> None:
        # Bytes before the choice (start_tls delivers them before the pool hands over the TLS
        # transport) wait for it; after it, only a transport that ignored set_protocol comes here.
        if self.chosen is not None:
            self.chosen.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self.chosen.eof_received() if self.chosen is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.chosen is not None:
            self.chosen.connection_lost(exc)


class H2Pool:
    """HTTP/2 connections per origin, for the HTTPS requests of a :class:`ConnectionPool` with http2.

    A new connection offers ``h2, http/1.1`` by ALPN, in that order. When the server picks
    HTTP/1.1 the connection goes to the HTTP/1.1 pool, which sends the request and keeps it.
    While one connection to an origin is being set up, the other requests for it wait to see
    whether it speaks HTTP/2 (and then share it) rather than each opening its own.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        open_connection: Callable[[Origin, PhaseTimer | None], Awaitable[asyncio.Protocol]],
        *,
        keepalive_expiry: float,
    ) -> None:
        self._pool = pool
        self._open_connection = open_connection
        self._keepalive_expiry = keepalive_expiry
        self._connections: dict[Origin, list[H2Connection]] = {}
        self._opening: dict[Origin, asyncio.Future[None]] = {}
        self._h1_origins: OrderedDict[Origin, None] = OrderedDict()
        self.resent = 0  # requests sent again because the server had not processed them

    async def handle_async_request(self, request: httpx.Request, origin: Origin, body: bytes) -> httpx.Response:
        unprocessed = 0
        while True:
            connection = self._with_room(origin)
            if connection is None and origin in self._h1_origins:
                idle = self._pool.checkout(origin)
                if idle is not None:
                    return await self._pool.send_on(request, origin, idle)
            if connection is None:
                pending = self._opening.get(origin)
                if pending is not None and origin not in self._h1_origins:
                    await asyncio.shield(pending)
                    continue  # the new connection may have room for this request too
                opened = await self._open(origin, request.extensions.get(TIMER))
                if not isinstance(opened, H2Connection):
                    return await self._pool.send_on(request, origin, cast("_Connection", opened))
                connection = opened
            try:
                return await connection.request(request, body)
            except Unprocessed as exc:
                unprocessed += exc.counted
                if unprocessed > MAX_RESENDS:
                    raise httpx.RemoteProtocolError(f"{exc}, {unprocessed} times in a row") from exc
                self.resent += 1

    def _with_room(self, origin: Origin) -> H2Connection | None:
        connections = self._connections.get(origin)
        if not connections:
            return None
        expired_before = time.monotonic() - self._keepalive_expiry
        found = None
        for connection in list(connections):
            if connection.open_streams == 0 and connection.idle_since <= expired_before:
                connection.close()  # idle too long: the server may be closing it right now
            if connection.closed or (connection.goaway and connection.open_streams == 0):
                connection.close()
                connections.remove(connection)
            elif found is None and connection.has_room():
                found = connection
        if not connections:
            del self._connections[origin]
        return found

    async def _open(self, origin: Origin, timer: PhaseTimer | None) -> asyncio.Protocol:
        done = self._opening[origin] = asyncio.get_running_loop().create_future()
        try:
            protocol = await self._open_connection(origin, timer)
            if isinstance(protocol, H2Connection):
                try:
                    # Streams only once the server's SETTINGS say how many it takes at once: a
                    # first burst of 100 would break a server that allows fewer. Half a round trip.
                    await asyncio.shield(protocol.settled)
                except BaseException:
                    protocol.close()
                    raise
                if protocol.closed:
                    raise httpx.RemoteProtocolError("server closed the HTTP/2 connection before its SETTINGS")
                self._h1_origins.pop(origin, None)
                self._connections.setdefault(origin, []).append(protocol)
            else:
                self._h1_origins[origin] = None
                self._h1_origins.move_to_end(origin)
                if len(self._h1_origins) > _MAX_H1_ORIGINS:
                    self._h1_origins.popitem(last=False)
        finally:
            if self._opening.get(origin) is done:
                del self._opening[origin]
            done.set_result(None)
        return protocol

    def close(self) -> None:
        for connections in self._connections.values():
            for connection in connections:
                connection.close()
        self._connections.clear()
