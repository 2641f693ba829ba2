"""HTTP/2 of our own (asyncfetch.h2conn): nothing lost to GOAWAY or REFUSED_STREAM, one connection for
many requests, and the same behaviour as the HTTP/1.1 pool. Against stock nginx and lighttpd:
tests/interop/test_http2_goaway.py."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import h2.errors
import pytest
import trustme

from tests.conftest import collect, records_of, run_cli
from tests.h2server import H2FaultServer
from tests.hypercorn_server import serving
from tests.server import TestServer

pytestmark = pytest.mark.anyio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@pytest.fixture(autouse=True)
def _trust_the_test_ca(ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))


def _pattern(size: int) -> bytes:
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


# -- an HTTP/2 server with the routes of tests/server.py that behaviour tests use -------------


async def _routes_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A few routes of tests/server.py, for hypercorn: the same behaviour, over HTTP/2."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    parts = scope["path"].strip("/").split("/")
    route, argument = parts[0], parts[1] if len(parts) > 1 else ""
    query = dict(pair.split("=", 1) for pair in scope["query_string"].decode().split("&") if "=" in pair)

    async def answer(status: int, content: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> None:
        fields = [(b"content-length", str(len(content)).encode()), *(headers or [])]
        await send({"type": "http.response.start", "status": status, "headers": fields})
        await send({"type": "http.response.body", "body": content})

    if route == "ok":
        await answer(200, b"ok\n")
    elif route == "version":
        await answer(200, scope["http_version"].encode())
    elif route == "bytes":
        await answer(200, _pattern(int(argument)))
    elif route == "status":
        await answer(int(argument))
    elif route == "sleep":
        await asyncio.sleep(int(argument) / 1000)
        await answer(200, b"slept\n")
    elif route == "gzip":
        await answer(200, gzip.compress(bytes(int(argument))), [(b"content-encoding", b"gzip")])
    elif route == "redirect":
        left = int(argument)
        if left == 0:
            await answer(200, b"done\n")
        else:
            await answer(int(query.get("status", "302")), b"", [(b"location", f"/redirect/{left - 1}".encode())])
    elif route == "drip":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(int(argument)):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(float(query.get("interval", "1")))
        await send({"type": "http.response.body", "body": b""})
    elif route == "echo":
        payload = {"method": scope["method"], "path": scope["path"], "body": body.decode("utf-8", "replace")}
        await answer(200, json.dumps(payload).encode(), [(b"content-type", b"application/json")])
    else:
        await answer(404)


@pytest.fixture(scope="module")
def hypercorn_h2(certificate_authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """hypercorn over TLS, speaking HTTP/2 to clients that offer it; yields its base URL."""
    with serving(
        _routes_app, certificate_authority, tmp_path_factory.mktemp("hypercorn"), keep_alive_timeout=60
    ) as url:
        yield url


@pytest.fixture(params=["HTTP/1.1", "HTTP/2"])
def either(request: pytest.FixtureRequest, tls_server: TestServer, hypercorn_h2: str) -> tuple[str, str]:
    """(base URL, the http_version records must show): our TLS HTTP/1.1 server, or hypercorn over h2."""
    if request.param == "HTTP/2":
        return hypercorn_h2, "HTTP/2"
    return tls_server.base, "HTTP/1.1"


# -- the same behaviour over HTTP/2 as over HTTP/1.1 ------------------------------------------


async def test_a_body_is_measured_and_hashed_the_same_way(either: tuple[str, str]) -> None:
    """size and sha256 describe the body whichever protocol carried it; http_version says which."""
    base, version = either
    [record] = await collect([base + "/bytes/300000"], http2=True)
    assert record.error is None, record.error
    assert (record.status, record.http_version, record.size) == (200, version, 300_000)
    assert record.sha256 == hashlib.sha256(_pattern(300_000)).hexdigest()


async def test_the_attempt_deadline_holds_for_a_slow_answer(either: tuple[str, str]) -> None:
    """A response that comes after the deadline is a timeout record."""
    base, _ = either
    [record] = await collect([base + "/sleep/5000"], http2=True, timeout=0.5, retries=0)
    assert record.error is not None
    assert record.error.kind == "timeout"


async def test_the_attempt_deadline_holds_for_a_dripping_body(either: tuple[str, str]) -> None:
    """A body that keeps coming, slowly, is cut at the deadline: a timeout record with the status seen."""
    base, _ = either
    [record] = await collect([base + "/drip/20?interval=0.2"], http2=True, timeout=0.5, retries=0)
    assert record.error is not None
    assert record.error.kind == "timeout"


async def test_max_size_ends_a_body_that_is_too_big(either: tuple[str, str]) -> None:
    """--max-size holds: a bigger body is too_large, not read to its end."""
    base, _ = either
    [record] = await collect([base + "/bytes/2000000"], http2=True, max_size=10_000)
    assert record.error is not None
    assert record.error.kind == "too_large"


async def test_a_redirect_chain_is_followed_and_recorded(either: tuple[str, str]) -> None:
    """Every hop is in the record, in order, and the final answer is the last hop's."""
    base, version = either
    [record] = await collect([base + "/redirect/3"], http2=True)
    assert record.status == 200
    assert [hop.status for hop in record.redirects] == [302, 302, 302]
    assert record.final_url == base + "/redirect/0"
    assert record.http_version == version


async def test_a_gzip_body_is_decoded_before_it_is_measured(either: tuple[str, str]) -> None:
    """size counts the decoded bytes, as over HTTP/1.1."""
    base, _ = either
    [record] = await collect([base + "/gzip/100000"], http2=True)
    assert record.error is None, record.error
    assert record.size == 100_000
    assert record.sha256 == hashlib.sha256(bytes(100_000)).hexdigest()


async def test_a_503_is_retried(either: tuple[str, str]) -> None:
    """Retryable statuses are retried the same way."""
    base, _ = either
    [record] = await collect([base + "/status/503"], http2=True, retries=1, max_retry_wait=0)
    assert (record.status, record.attempts) == (503, 2)


async def test_a_request_body_arrives_whole(either: tuple[str, str]) -> None:
    """A POST body bigger than HTTP/2's initial window arrives whole (flow control on the way out)."""
    base, _ = either
    data = os.urandom(100_000).hex().encode()
    [record] = await collect([base + "/echo"], http2=True, method="POST", data=data, include_body=True)
    assert record.body is not None, record.error
    echoed = json.loads(record.body)
    assert (echoed["method"], echoed["body"]) == ("POST", data.decode())


async def test_timings_remote_and_tls_facts_are_recorded(either: tuple[str, str]) -> None:
    """--timings, remote_ip and --tls describe an HTTP/2 connection as they do an HTTP/1.1 one (ALPN then timed)."""
    base, version = either
    [record] = await collect([base + "/ok"], http2=True, timings=True, tls=True)
    fields = record.to_dict()
    assert (record.status, record.http_version) == (200, version)
    assert fields["remote_ip"] == "127.0.0.1"
    timings = fields["timings"]
    assert None not in (timings["connect"], timings["tls"], timings["ttfb"])
    assert fields["tls"]["version"].startswith("TLS")
    assert fields["tls"]["alpn"] == ("h2" if version == "HTTP/2" else None)


def test_the_cli_flag_asks_for_http2(hypercorn_h2: str, ca_file: Path) -> None:
    """asyncfetch --http2 URL: the record says HTTP/2; without the flag, HTTP/1.1."""
    env = {"SSL_CERT_FILE": str(ca_file)}
    with_flag = run_cli("-q", "--http2", hypercorn_h2 + "/version", env=env)
    without = run_cli("-q", hypercorn_h2 + "/version", env=env)
    assert with_flag.returncode == 0, with_flag.stderr
    assert [r["http_version"] for r in records_of(with_flag.stdout)] == ["HTTP/2"]
    assert [r["http_version"] for r in records_of(without.stdout)] == ["HTTP/1.1"]


# -- HTTP/2 itself -----------------------------------------------------------------------------


async def test_big_bodies_flow_on_many_streams_at_once(hypercorn_h2: str) -> None:
    """Bodies many times the receive windows arrive whole, many at once: received data is acknowledged."""
    urls = [f"{hypercorn_h2}/bytes/3000000?i={i}" for i in range(12)]
    records = await collect(urls, http2=True, concurrency=12)
    digest = hashlib.sha256(_pattern(3_000_000)).hexdigest()
    assert [(r.error, r.size, r.sha256) for r in records] == [(None, 3_000_000, digest)] * 12


@pytest.fixture(scope="module")
def h2_fault(certificate_authority: trustme.CA) -> Iterator[H2FaultServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(context)
    running = H2FaultServer(context).start()
    yield running
    running.stop()


@pytest.fixture
def h2_server(h2_fault: H2FaultServer) -> H2FaultServer:
    """The misbehaving HTTP/2 server, well behaved and with empty stats at the start of each test."""
    h2_fault.reset()
    return h2_fault


async def test_many_requests_to_one_origin_share_one_connection(h2_server: H2FaultServer) -> None:
    """50 requests at once to one host go as streams of one connection, not 50 handshakes."""
    records = await collect([h2_server.url(f"/r/{i}") for i in range(50)], http2=True, concurrency=50)
    assert [r.status for r in records] == [200] * 50
    assert {r.http_version for r in records} == {"HTTP/2"}
    assert h2_server.connections == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_requests_past_a_goaway_go_again_on_a_new_connection(h2_server: H2FaultServer, method: str) -> None:
    """Streams after GOAWAY's last_stream_id were not processed: each is sent again, any method, in the same attempt."""
    h2_server.goaway_after = 7
    urls = [h2_server.url(f"/r/{i}") for i in range(60)]
    records = await collect(urls, http2=True, concurrency=30, retries=0, method=method, data=b"payload")
    assert [(r.status, r.attempts, r.error) for r in records] == [(200, 1, None)] * 60
    # Each request processed exactly once, some of them only after being turned away.
    assert sorted(h2_server.processed_paths()) == sorted(f"/r/{i}" for i in range(60))
    assert any(not seen.processed for seen in h2_server.seen)
    assert h2_server.connections >= 60 // 7


async def test_no_stream_is_opened_on_a_connection_after_its_goaway(h2_server: H2FaultServer) -> None:
    """After GOAWAY a connection takes no new stream: no stream past the last one arrives once it was announced."""
    h2_server.goaway_after = 3
    await collect([h2_server.url(f"/r/{i}") for i in range(30)], http2=True, concurrency=1, retries=0)
    # One at a time, so every request after the third on a connection would have been sent after
    # the client read the GOAWAY: none may be, so nothing was turned away.
    assert [seen.processed for seen in h2_server.seen] == [True] * 30
    assert h2_server.connections == 10


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_refused_streams_go_again_without_counting_as_an_attempt(h2_server: H2FaultServer, method: str) -> None:
    """RST_STREAM(REFUSED_STREAM) means unprocessed: the request goes again, any method, attempts stays 1."""
    h2_server.refuse_first = 3
    [record] = await collect([h2_server.url("/once")], http2=True, retries=0, method=method, data=b"x")
    assert (record.status, record.attempts, record.error) == (200, 1, None)
    assert [seen.processed for seen in h2_server.seen] == [False, False, False, True]


async def test_a_server_that_refuses_forever_gives_a_protocol_record(h2_server: H2FaultServer) -> None:
    """Resending is bounded: a stream refused again and again ends as a protocol error naming the refusal."""
    h2_server.refuse_first = 10_000
    [record] = await collect([h2_server.url("/never")], http2=True, retries=0)
    assert record.error is not None
    assert record.error.kind == "protocol"
    assert "REFUSED_STREAM" in record.error.message


async def test_a_stream_reset_by_the_server_is_a_protocol_error_not_resent(h2_server: H2FaultServer) -> None:
    """Any other RST_STREAM may follow processing: a POST is not sent again, the record names the code."""
    h2_server.reset_code = h2.errors.ErrorCodes.INTERNAL_ERROR
    [record] = await collect([h2_server.url("/boom")], http2=True, retries=2, method="POST", data=b"x")
    assert record.error is not None
    assert record.error.kind == "protocol"
    assert "INTERNAL_ERROR" in record.error.message
    assert len(h2_server.seen) == 1


async def test_requests_across_an_idle_goaway_all_succeed(h2_server: H2FaultServer) -> None:
    """A server that says GOAWAY as soon as a connection is idle (an idle timeout) loses no request, POST included."""
    h2_server.idle_goaway = True
    urls = [h2_server.url(f"/r/{i}") for i in range(20)]
    records = await collect(urls, http2=True, concurrency=2, retries=0, method="POST", data=b"x")
    assert Counter((r.status, r.error) for r in records) == {(200, None): 20}
    assert sorted(h2_server.processed_paths()) == sorted(f"/r/{i}" for i in range(20))


async def test_a_reader_that_goes_away_resets_its_stream(h2_server: H2FaultServer) -> None:
    """A body abandoned midway (max-size) gets RST_STREAM(CANCEL); the server goes on serving."""
    # Bigger than the stream's receive window: the server cannot have ended it when the reader leaves.
    [big] = await collect([h2_server.url("/bytes/3000000")], http2=True, max_size=1000)
    assert big.error is not None
    assert big.error.kind == "too_large"
    deadline = time.monotonic() + 10
    while not h2_server.resets:
        if time.monotonic() > deadline:
            raise TimeoutError("the server saw no RST_STREAM")
        await asyncio.sleep(0.01)
    assert [code for _, _, code in h2_server.resets] == [h2.errors.ErrorCodes.CANCEL]
    [after] = await collect([h2_server.url("/after")], http2=True)
    assert after.status == 200


async def test_a_server_that_chooses_http_1_1_is_spoken_to_in_http_1_1(fresh_tls_server: TestServer) -> None:
    """ALPN without h2 from the server: the same TLS connection carries HTTP/1.1, and is kept alive for the next."""
    records = await collect([fresh_tls_server.url(f"/ok?i={i}") for i in range(5)], http2=True, concurrency=1)
    assert [(r.status, r.http_version) for r in records] == [(200, "HTTP/1.1")] * 5
    assert fresh_tls_server.stats.connections == 1


@pytest.fixture
def fresh_tls_server(certificate_authority: trustme.CA) -> Iterator[TestServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(context)
    running = TestServer(ssl_context=context).start()
    yield running
    running.stop()
