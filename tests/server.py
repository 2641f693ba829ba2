"""A real HTTP/1.1 server on 127.0.0.1 for the tests: misbehaves on request, counts what it sees.

It runs its own event loop in a daemon thread, so the same server answers in-process async
tests and CLI subprocesses alike. Routes (``?key=value`` query parameters in brackets):

    /ok                         200 "ok\\n"
    /status/CODE [retry_after]  that status; Retry-After when given
    /sleep/MS                   answers after MS milliseconds
    /bytes/N                    N bytes of a fixed pattern (Content-Length)
    /chunked/N                  N bytes in chunked transfer coding
    /no-length/N                N bytes, no Content-Length: ends when the server closes
    /drip/N [interval]          headers at once, then one byte every interval s (default 1)
    /stall-headers              accepts the request, never answers
    /gzip/N                     N zero bytes, gzip-coded (N large: a compression bomb)
    /deflate/N                  N zero bytes, deflate-coded (zlib-wrapped)
    /coded/N [codings, data]    N zero bytes (or `data` as text) with each of `codings` (comma-separated,
                                in the order applied; gzip, deflate, br, zstd are applied, any other is
                                only named in Content-Encoding)
    /redirect/N [status]        N redirects (302 by default) before a 200
    /redirect-to [url, status]  one redirect to url
    /reset                      reads the request, then resets the connection (RST)
    /close                      reads the request, then closes without a word
    /garbage                    answers with bytes that are not HTTP
    /echo                       JSON: method, path, headers (lower-case), body
    /flaky/KEY [fail, status, retry_after]
                                the first `fail` requests for KEY answer `status` (503)
    /text [charset]             a UTF-8 or latin-1 text body with that charset
    /binary                     bytes that are not text
    /headers                    a response with repeated and odd headers
    /truncated/N                Content-Length N, then N/2 bytes and a close
    /bye                        200 "bye\n" (keep-alive by its headers), then closes the connection
    /close-once/KEY             the first request for KEY is closed without a word, later ones get 200
    /resource/N                 N bytes (Content-Length); a HEAD gets the headers only, as HTTP requires
    /cond/KEY [validators]      the body ``server.documents[KEY]`` (default b"v1"), with an ETag and a
                                Last-Modified of that body (validators=etag, lm, both: default, none);
                                honours If-None-Match / If-Modified-Since with a 304; 503 while KEY
                                is in ``server.closed_gates``
    /gate/KEY [ms]              503 while KEY is in ``server.closed_gates``, else 200 after ms milliseconds
    /headers-forever [size]     a status line, then headers of `size` bytes (default 100) until the client hangs up
    /endless-header             a status line, then one header whose value never ends
    /interim-flood              interim responses (103 Early Hints, with a header) until the client hangs up
    /status-line [line]         the status line given (raw), then a 2-byte body "ok"
    /overlong/N [extra, later]  Content-Length N, then N bytes and `extra` (default: a whole fake response),
                                in the same write, or `later` seconds after (then counter overlong-extra-sent)

Every request is recorded: path, method, headers, start time (``time.monotonic()``), and the
highest number in flight at once (``max_in_flight``); connections are counted per local
address (``connections_to``), and the most open at once (``max_open``).

``TestServer(aliases=n)`` also listens on 127.0.0.2 ... 127.0.0.(n+1), same port: n + 1
distinct hosts (origins) served by one server (all of 127.0.0.0/8 is loopback on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import hashlib
import json
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    started: float


@dataclass
class Stats:
    requests: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0
    open: int = 0
    max_open: int = 0
    by_address: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)

    def paths(self) -> list[str]:
        return [seen.path for seen in self.requests]


class _Abort(Exception):
    """Stop serving this connection (after a reset or a close)."""


class TestServer:
    """An HTTP/1.1 server on 127.0.0.1, on an ephemeral port unless one is given."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, *, ssl_context: object = None, aliases: int = 0) -> None:
        self._ssl = ssl_context
        self._aliases = aliases
        self._alias_servers: list[asyncio.Server] = []
        self._lock = threading.Lock()
        self.stats = Stats()
        self.documents: dict[str, bytes] = {}  # /cond/KEY bodies; change one to change the resource
        self.closed_gates: set[str] = set()  # /gate/KEY answers 503 while KEY is here
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-http-server", daemon=True)
        self.port = 0
        self._server: asyncio.Server | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> TestServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for alias in self._alias_servers:
                alias.close()
            handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)  # ended, not left to log

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.run_until_complete(asyncio.sleep(0))  # let cancelled handlers finish
        self._loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(
                self._connection, "127.0.0.1", 0, ssl=self._ssl, backlog=4096, limit=1 << 20
            )
            self.port = self._server.sockets[0].getsockname()[1]
            for number in range(2, self._aliases + 2):
                self._alias_servers.append(
                    await asyncio.start_server(
                        self._connection, f"127.0.0.{number}", self.port, ssl=self._ssl, backlog=4096, limit=1 << 20
                    )
                )

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    @property
    def base(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def hosts(self) -> list[str]:
        """The base URL of each host this server answers as: 127.0.0.1, then its aliases."""
        scheme = "https" if self._ssl is not None else "http"
        return [f"{scheme}://127.0.0.{number}:{self.port}" for number in range(1, self._aliases + 2)]

    def connections_to(self, address: str) -> int:
        """Connections accepted on one of the server's addresses."""
        with self._lock:
            return self.stats.by_address[address]

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = Stats()

    def hits(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for seen in self.stats.requests if seen.path.startswith(prefix))

    # -- serving ---------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        local = writer.get_extra_info("sockname")[0]
        with self._lock:
            self.stats.connections += 1
            self.stats.by_address[local] += 1
            self.stats.open += 1
            self.stats.max_open = max(self.stats.max_open, self.stats.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, target, headers, body, time.monotonic())
                with self._lock:
                    self.stats.requests.append(seen)
                    self.stats.in_flight += 1
                    self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
                try:
                    keep = await self._respond(seen, writer)
                finally:
                    with self._lock:
                        self.stats.in_flight -= 1
                if not keep or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, _Abort, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        finally:
            with self._lock:
                self.stats.open -= 1
            if not writer.transport.is_closing():
                writer.close()

    async def _respond(self, seen: Seen, writer: asyncio.StreamWriter) -> bool:
        parts = urlsplit(seen.path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segments = path.strip("/").split("/")
        route = segments[0]
        arg = segments[1] if len(segments) > 1 else ""

        def send(status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
            out = [f"HTTP/1.1 {status} X"]
            names = {name.lower() for name, _ in headers or []}
            for name, value in headers or []:
                out.append(f"{name}: {value}")
            if "content-length" not in names and "transfer-encoding" not in names:
                out.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)

        if route == "ok":
            send(200, b"ok\n", [("Content-Type", "text/plain")])
        elif route == "status":
            extra = [("Retry-After", query["retry_after"])] if "retry_after" in query else []
            send(int(arg), f"status {arg}\n".encode(), extra)
        elif route == "sleep":
            await asyncio.sleep(int(arg) / 1000)
            send(200, b"slept\n")
        elif route == "bytes":
            send(200, _pattern(int(arg)), [("Content-Type", "application/octet-stream")])
        elif route == "chunked":
            data = _pattern(int(arg))
            chunks = b"".join(
                f"{len(data[i : i + 1000]):x}\r\n".encode() + data[i : i + 1000] + b"\r\n"
                for i in range(0, len(data), 1000)
            )
            send(200, chunks + b"0\r\n\r\n", [("Transfer-Encoding", "chunked")])
        elif route == "no-length":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + _pattern(int(arg)))
            await writer.drain()
            return False
        elif route == "drip":
            interval = float(query.get("interval", "1"))
            total = int(arg)
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
            for _ in range(total):
                await writer.drain()
                await asyncio.sleep(interval)
                writer.write(b"x")
            await writer.drain()
        elif route == "stall-headers":
            await asyncio.sleep(3600)
        elif route in ("gzip", "deflate"):
            raw = bytes(int(arg))
            coded = gzip.compress(raw, 9) if route == "gzip" else zlib.compress(raw, 9)
            send(200, coded, [("Content-Encoding", route), ("Content-Type", "application/octet-stream")])
        elif route == "coded":
            data = query["data"].encode() if "data" in query else bytes(int(arg))
            codings = query.get("codings", "gzip")
            for coding in codings.split(","):
                data = _encode(coding.strip(), data)
            send(200, data, [("Content-Encoding", codings), ("Content-Type", "application/octet-stream")])
        elif route == "redirect":
            left = int(arg)
            if left <= 0:
                send(200, b"arrived\n")
            else:
                status = int(query.get("status", "302"))
                suffix = f"?status={status}" if "status" in query else ""
                send(status, b"", [("Location", f"/redirect/{left - 1}{suffix}")])
        elif route == "redirect-to":
            send(int(query.get("status", "302")), b"", [("Location", query["url"])])
        elif route == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            raise _Abort()
        elif route == "close":
            writer.close()
            raise _Abort()
        elif route == "garbage":
            writer.write(b"THIS IS NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            writer.close()
            raise _Abort()
        elif route == "echo":
            payload = {
                "method": seen.method,
                "path": seen.path,
                "headers": seen.headers,
                "body": seen.body.decode("utf-8", "replace"),
            }
            send(200, json.dumps(payload).encode(), [("Content-Type", "application/json")])
        elif route == "flaky":
            with self._lock:
                self.stats.counters[arg] += 1
                count = self.stats.counters[arg]
            if count <= int(query.get("fail", "1")):
                extra = [("Retry-After", query["retry_after"])] if "retry_after" in query else []
                send(int(query.get("status", "503")), b"try again\n", extra)
            else:
                send(200, b"recovered\n")
        elif route == "text":
            charset = query.get("charset", "utf-8")
            send(200, "héllo wörld\n".encode(charset), [("Content-Type", f"text/plain; charset={charset}")])
        elif route == "binary":
            send(200, b"\x00\xff\xfe\x01binary", [("Content-Type", "application/octet-stream")])
        elif route == "headers":
            send(200, b"h\n", [("X-Twice", "one"), ("X-Twice", "two"), ("X-Latin", "caf\xe9")])
        elif route == "truncated":
            total = int(arg)
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode() + _pattern(total // 2))
            await writer.drain()
            writer.close()
            raise _Abort()
        elif route == "bye":
            send(200, b"bye\n")
            await writer.drain()
            return False
        elif route == "close-once":
            with self._lock:
                self.stats.counters["close-once:" + arg] += 1
                count = self.stats.counters["close-once:" + arg]
            if count == 1:
                writer.close()
                raise _Abort()
            send(200, b"second time\n")
        elif route == "resource":
            size = int(arg)
            if seen.method == "HEAD":
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            else:
                send(200, _pattern(size), [("Content-Type", "application/octet-stream")])
        elif route == "cond" and arg in self.closed_gates:
            send(503, b"closed\n")
        elif route == "cond":
            send(*_conditional(self.documents.get(arg, b"v1"), query.get("validators", "both"), seen.headers))
        elif route == "gate":
            if arg in self.closed_gates:
                send(503, b"closed\n")
            else:
                await asyncio.sleep(int(query.get("ms", "0")) / 1000)
                send(200, b"open\n")
        elif route == "headers-forever":
            size = int(query.get("size", "100"))
            writer.write(b"HTTP/1.1 200 OK\r\n")
            number = 0
            while True:  # until the client hangs up: a ConnectionError ends the connection
                number += 1
                name = f"X-{number}: "
                writer.write((name + "h" * max(size - len(name) - 2, 1) + "\r\n").encode())
                await writer.drain()
        elif route == "endless-header":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
            while True:
                writer.write(b"v" * 4096)
                await writer.drain()
        elif route == "interim-flood":
            while True:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
                await writer.drain()
        elif route == "status-line":
            writer.write(query["line"].encode("latin-1") + b"\r\nContent-Length: 2\r\n\r\nok")
        elif route == "overlong":
            size = int(arg)
            fake = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake"
            response = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode() + _pattern(size)
            tail = query.get("extra", fake).encode("latin-1")
            if "later" not in query:
                writer.write(response + tail)  # one write: the client reads it all at once
            else:
                writer.write(response)
                await writer.drain()
                await asyncio.sleep(float(query["later"]))
                writer.write(tail)
                await writer.drain()
                with self._lock:
                    self.stats.counters["overlong-extra-sent"] += 1
        else:
            send(404, b"no such route\n")
        await writer.drain()
        return True


def _conditional(body: bytes, validators: str, headers: dict[str, str]) -> tuple[int, bytes, list[tuple[str, str]]]:
    """The answer of /cond: 200 with the body's validators, or 304 when the request's match them."""
    digest = hashlib.sha256(body).hexdigest()
    etag = f'"{digest[:16]}"'
    # A Last-Modified that changes with the body: seconds since 2020 taken from its digest.
    modified = email.utils.formatdate(1_577_836_800 + int(digest[:6], 16), usegmt=True)
    out: list[tuple[str, str]] = []
    if validators in ("etag", "both"):
        out.append(("ETag", etag))
        if headers.get("if-none-match") == etag:
            return 304, b"", out
    if validators in ("lm", "both"):
        out.append(("Last-Modified", modified))
        if "if-none-match" not in headers and headers.get("if-modified-since") == modified:
            return 304, b"", out
    return 200, body, [*out, ("Content-Type", "text/plain")]


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: every request times out.

    ``connections`` counts the connections it accepted (from any thread).
    """

    __test__ = False

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4096)
        self.port: int = self._listener.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)
        self._stopped = False

    def start(self) -> Blackhole:
        self._thread.start()
        return self

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._accepted)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._accepted.append(conn)  # held open, never read: the request waits forever

    def stop(self) -> None:
        self._stopped = True
        # Wake accept() with a connection of our own, then close everything.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            pass
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            for conn in self._accepted:
                conn.close()


def _encode(coding: str, data: bytes) -> bytes:
    """``data`` in a content coding; codings we cannot apply are left out (only named)."""
    if coding == "gzip":
        return gzip.compress(data, 9)
    if coding == "deflate":
        return zlib.compress(data, 9)
    if coding == "br":
        import brotli

        return bytes(brotli.compress(data))
    if coding == "zstd":
        from backports import zstd

        return zstd.compress(data)
    return data


def _pattern(size: int) -> bytes:
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]
