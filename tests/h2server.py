"""A misbehaving HTTP/2 server (TLS, ALPN h2) for the tests, on the h2 library's server side.

It runs its own event loop in a daemon thread, like :mod:`tests.server`. Every request is
answered ``200`` with the body ``"METHOD PATH BODY-LENGTH"``, except ``/bytes/N`` (N bytes).
The faults, set as attributes before or between requests:

    goaway_after = N    on each connection, after the N-th request: GOAWAY(NO_ERROR) naming
                        that request's stream as the last; the streams up to it are answered,
                        those after it are never processed; the connection closes when done
    refuse_first = K    the first K requests (over all connections) get RST_STREAM(REFUSED_STREAM)
    reset_code = CODE   every request gets RST_STREAM(CODE) instead of an answer (processed)
    idle_goaway = True  after each answer, an idle connection gets GOAWAY(NO_ERROR) and is
                        closed soon after (an idle timeout, as caddy's)

``seen`` lists every request: (connection number, stream id, method, path, processed);
``resets`` lists the (connection, stream id, code) of the RST_STREAMs clients sent.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


@dataclass
class H2Seen:
    connection: int
    stream_id: int
    method: str
    path: str
    processed: bool


@dataclass
class _Request:
    method: str = ""
    path: str = ""
    body: bytearray = field(default_factory=bytearray)


class H2FaultServer:
    """An HTTP/2-over-TLS server on 127.0.0.1, on an ephemeral port."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        ssl_context.set_alpn_protocols(["h2"])
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-h2-server", daemon=True)
        self._server: asyncio.Server | None = None
        self._protocols: set[_ServerConnection] = set()
        self.port = 0
        self.goaway_after: int | None = None
        self.refuse_first = 0
        self.reset_code: int | None = None
        self.idle_goaway = False
        self.seen: list[H2Seen] = []
        self.resets: list[tuple[int, int, int]] = []
        self.connections = 0

    def start(self) -> H2FaultServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the HTTP/2 test server did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            for protocol in list(self._protocols):
                protocol.transport.abort()
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def reset(self) -> None:
        """Back to good behaviour, stats cleared."""
        with self._lock:
            self.goaway_after = None
            self.refuse_first = 0
            self.reset_code = None
            self.idle_goaway = False
            self.seen.clear()
            self.resets.clear()
            self.connections = 0

    def processed_paths(self) -> list[str]:
        with self._lock:
            return [seen.path for seen in self.seen if seen.processed]

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await self._loop.create_server(self._new_connection, "127.0.0.1", 0, ssl=self._ssl)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    def _new_connection(self) -> _ServerConnection:
        with self._lock:
            self.connections += 1
            number = self.connections
        return _ServerConnection(self, number)


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: H2FaultServer, number: int) -> None:
        self.server = server
        self.number = number
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.requests: dict[int, _Request] = {}
        self.count = 0
        self.last_stream: int | None = None  # set once this connection has sent GOAWAY
        self.outgoing: dict[int, memoryview] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.server._protocols.add(self)
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._protocols.discard(self)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.abort()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived) and event.stream_id:
                headers: dict[Any, Any] = dict(event.headers or [])
                self.requests[event.stream_id] = _Request(str(headers[":method"]), str(headers[":path"]))
                if event.stream_ended:
                    self.answer(event.stream_id)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id:
                request = self.requests.get(event.stream_id)
                if request is not None:
                    request.body += event.data or b""
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id in self.requests:
                self.answer(event.stream_id)
            elif isinstance(event, h2.events.StreamReset) and event.stream_id and event.remote_reset:
                with self.server._lock:
                    self.server.resets.append((self.number, event.stream_id, int(event.error_code or 0)))
                self.outgoing.pop(event.stream_id, None)
        self.pump()
        self.flush()

    def answer(self, stream_id: int) -> None:
        server = self.server
        request = self.requests.pop(stream_id)
        processed = True
        with server._lock:
            if self.last_stream is not None and stream_id > self.last_stream:
                processed = False  # sent before the client read our GOAWAY: never processed
            elif server.refuse_first > 0:
                server.refuse_first -= 1
                processed = False
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            server.seen.append(H2Seen(self.number, stream_id, request.method, request.path, processed))
        if not processed:
            self.maybe_close()
            return
        self.count += 1
        if server.reset_code is not None:
            self.h2.reset_stream(stream_id, server.reset_code)
            return
        if server.goaway_after is not None and self.count == server.goaway_after and self.last_stream is None:
            self.goaway(stream_id)  # before this stream's answer, as nginx does: it must still arrive
        if request.path.startswith("/bytes/"):
            body = bytes(i % 251 for i in range(int(request.path.removeprefix("/bytes/"))))
        else:
            body = f"{request.method} {request.path} {len(request.body)}".encode()
        self.h2.send_headers(stream_id, [(":status", "200"), ("content-length", str(len(body)))])
        self.send_body(stream_id, body)
        if server.idle_goaway and not self.requests:
            self.goaway(stream_id)
        self.maybe_close()

    def send_body(self, stream_id: int, body: bytes) -> None:
        self.outgoing[stream_id] = memoryview(body)
        self.pump()

    def pump(self) -> None:
        """Send what the client's flow-control windows allow; the rest waits for its WINDOW_UPDATEs."""
        for stream_id, pending in list(self.outgoing.items()):
            view = pending
            try:
                while view:
                    room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
                    if room <= 0:
                        break
                    self.h2.send_data(stream_id, view[:room].tobytes())
                    view = view[room:]
                if view:
                    self.outgoing[stream_id] = view
                else:
                    del self.outgoing[stream_id]
                    self.h2.end_stream(stream_id)
            except h2.exceptions.StreamClosedError:
                del self.outgoing[stream_id]  # reset by the client

    def goaway(self, last_stream: int) -> None:
        self.last_stream = last_stream
        state = self.h2.state_machine.state
        self.h2.close_connection(last_stream_id=last_stream)
        # h2 would refuse the frames of the streams it is still to answer: keep it open.
        self.h2.state_machine.state = state

    def maybe_close(self) -> None:
        """After a GOAWAY, close once every stream up to the last one is answered."""
        last = self.last_stream
        if last is not None and not any(stream_id <= last for stream_id in self.requests):
            self.flush()
            # Not at once: closing with the client's bytes unread would reset the connection and
            # could destroy the GOAWAY before the client reads it (servers linger the same way).
            asyncio.get_running_loop().call_later(0.5, self.transport.close)
