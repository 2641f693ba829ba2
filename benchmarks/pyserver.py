"""A small HTTP/1.1 server in pure asyncio: the benchmarks' fallback where nginx is missing.

    python benchmarks/pyserver.py --port 8097
    python benchmarks/pyserver.py --port 8443 --hosts 200 --cert leaf.pem --key leaf.key   # many HTTPS hosts

Same endpoints as benchmarks/nginx.conf: /ok, /sleep/MS, /bytes/1k, /bytes/100k, /bytes/1m and
/server_status (nginx stub_status format), plus /cond/SIZE (ok, 1k, 100k, 1m: that body with an
ETag and a Last-Modified; 304 when If-None-Match matches, as a static file server answers).
Keep-alive, one request at a time per connection (pipelined requests wait their turn), GET/HEAD
only, bodies of requests are skipped. It is one Python process on one event loop (uvloop when
importable), so on /ok it is much slower than nginx: on that workload it measures the server as
much as the client.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
from typing import cast

_MAX_HEAD = 64 * 1024
_BYTES = {b"1k": os.urandom(1024), b"100k": os.urandom(100 * 1024), b"1m": os.urandom(1024 * 1024)}
_REASONS = {200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
_CONDITIONAL = {b"ok": b"ok\n", **_BYTES}
# The body is random per process: an ETag from its digest changes when the server restarts.
_ETAGS = {name: f'"{hashlib.sha256(body).hexdigest()[:16]}"' for name, body in _CONDITIONAL.items()}
_LAST_MODIFIED = b"Tue, 01 Dec 2026 00:00:00 GMT"


class Counters:
    """What /server_status reports."""

    def __init__(self) -> None:
        self.accepted = 0
        self.active = 0
        self.requests = 0

    def status_page(self) -> bytes:
        return (
            f"Active connections: {self.active} \nserver accepts handled requests\n"
            f" {self.accepted} {self.accepted} {self.requests} \nReading: 0 Writing: 1 Waiting: 0 \n"
        ).encode()


def response(status: int, body: bytes, *, keep_alive: bool, head_only: bool = False, etag: str | None = None) -> bytes:
    validators = b"ETag: %s\r\nLast-Modified: %s\r\n" % (etag.encode(), _LAST_MODIFIED) if etag else b""
    head = (
        b"HTTP/1.1 %d %s\r\nServer: asyncfetch-bench\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"%sConnection: %s\r\n\r\n"
        % (
            status,
            _REASONS[status],
            b"application/octet-stream" if len(body) >= 1024 else b"text/plain",
            len(body),
            validators,
            b"keep-alive" if keep_alive else b"close",
        )
    )
    return head if head_only else head + body


class Connection(asyncio.Protocol):
    """One client connection: parse a request head, answer, repeat."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting = False  # a /sleep answer is pending: later requests wait
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self.counters.accepted += 1
        self.counters.active += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.active -= 1
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.waiting:
            self.serve_buffered()

    def serve_buffered(self) -> None:
        while self.transport is not None and not self.waiting:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self.transport.write(response(400, b"head too large\n", keep_alive=False))
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            body_length = int(headers.get("content-length", "0") or "0")
            if len(self.buffer) < end + 4 + body_length:
                return  # the request body is still arriving
            del self.buffer[: end + 4 + body_length]
            self.counters.requests += 1
            self.answer(lines[0], headers)

    def answer(self, request_line: str, headers: dict[str, str]) -> None:
        assert self.transport is not None
        parts = request_line.split(" ")
        if len(parts) != 3:
            self.transport.write(response(400, b"bad request line\n", keep_alive=False))
            self.transport.close()
            return
        method, target, version = parts
        connection = headers.get("connection", "")
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, body = 405, b"method not allowed\n"
        elif path == "/ok":
            status, body = 200, b"ok\n"
        elif path == "/server_status":
            status, body = 200, self.counters.status_page()
        elif path.startswith("/bytes/") and path[7:].encode() in _BYTES:
            status, body = 200, _BYTES[path[7:].encode()]
        elif path.startswith("/cond/") and path[6:].encode() in _CONDITIONAL:
            body = _CONDITIONAL[path[6:].encode()]
            etag = _ETAGS[path[6:].encode()]
            if headers.get("if-none-match") == etag:
                status, body = 304, b""
            else:
                status = 200
            self.transport.write(response(status, body, keep_alive=keep_alive, head_only=head_only, etag=etag))
            if not keep_alive:
                self.transport.close()
            return
        elif path.startswith("/sleep/") and path[7:].isdigit():
            millis = int(path[7:])
            self.waiting = True
            self.timer = asyncio.get_running_loop().call_later(
                millis / 1000, self.wake, f"slept {millis / 1000:.3f}\n".encode(), keep_alive, head_only
            )
            return
        else:
            status, body = 404, b"not found\n"
        self.send(status, body, keep_alive=keep_alive, head_only=head_only)

    def wake(self, body: bytes, keep_alive: bool, head_only: bool) -> None:
        self.timer = None
        self.waiting = False
        if self.transport is None:
            return
        self.send(200, body, keep_alive=keep_alive, head_only=head_only)
        self.serve_buffered()

    def send(self, status: int, body: bytes, *, keep_alive: bool, head_only: bool) -> None:
        assert self.transport is not None
        self.transport.write(response(status, body, keep_alive=keep_alive, head_only=head_only))
        if not keep_alive:
            self.transport.close()


async def serve(host: str, port: int, *, hosts: int = 1, cert: str | None = None, key: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters()
    context = None
    if cert is not None:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    # --hosts N: also 127.0.0.2 ... 127.0.0.N on the same port (Linux: all of 127/8 is loopback).
    addresses = [host] if hosts <= 1 else [f"127.0.0.{n}" for n in range(1, hosts + 1)]
    servers = [
        await loop.create_server(
            lambda: Connection(counters), address, port, backlog=4096, reuse_address=True, ssl=context
        )
        for address in addresses
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scheme = "https" if context is not None else "http"
    print(
        f"pyserver: listening on {scheme}://{addresses[0]}:{port}"
        + (f" and {len(addresses) - 1} more" if hosts > 1 else ""),
        flush=True,
    )
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hosts", type=int, default=1, help="listen on 127.0.0.1 ... 127.0.0.N (many hosts)")
    parser.add_argument("--cert", help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--key", help="the certificate's private key (PEM)")
    args = parser.parse_args()
    server = serve(args.host, args.port, hosts=args.hosts, cert=args.cert, key=args.key)
    try:
        import uvloop
    except ImportError:
        asyncio.run(server)
    else:
        uvloop.run(server)


if __name__ == "__main__":
    main()
