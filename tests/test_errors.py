"""Error kinds: classify() as the one translation boundary, and each kind provoked for real."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from asyncfetch.errors import ErrorKind, FetchError, classify
from asyncfetch.record import Record
from asyncfetch.retry import RETRYABLE_KINDS
from asyncfetch.transport import ConnectionPool, Resolver
from tests.conftest import collect, unused_port
from tests.server import TestServer

pytestmark = pytest.mark.anyio


def _kind(record: Record) -> ErrorKind | None:
    return record.error.kind if record.error is not None else None


def _raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


# -- classify(): the vocabulary -------------------------------------------------------------------


def test_the_error_kinds_are_exactly_the_contracts() -> None:
    """ErrorKind holds the contract's ten kinds and save (its local failure), and later issues' own."""
    assert {kind.value for kind in ErrorKind} == {
        "invalid_url",
        "invalid_input",
        "dns",
        "connect",
        "tls",
        "timeout",
        "read",
        "protocol",
        "too_many_redirects",
        "too_large",
        "host_unreachable",  # issue 12: --max-host-errors
        "save",
    }


def test_the_retryable_kinds_are_the_contracts() -> None:
    """Only connect, timeout, read and protocol errors are worth a retry."""
    assert {ErrorKind.CONNECT, ErrorKind.TIMEOUT, ErrorKind.READ, ErrorKind.PROTOCOL} == RETRYABLE_KINDS


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_raised_from(httpx.ConnectError("cannot resolve x"), socket.gaierror(-2, "Name or service not known")), "dns"),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "dns"),
        (
            _raised_from(httpx.ConnectError("handshake failed"), ssl.SSLCertVerificationError(1, "verify failed")),
            "tls",
        ),
        (_raised_from(httpx.ConnectError("handshake failed"), ssl.SSLError(1, "wrong version number")), "tls"),
        (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), "tls"),
        (_raised_from(httpx.ConnectError("refused"), ConnectionRefusedError(111, "Connection refused")), "connect"),
        (httpx.ConnectError("All connection attempts failed"), "connect"),
        (httpx.ConnectTimeout("no connection within 1 s"), "timeout"),
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.PoolTimeout("pool timed out"), "timeout"),
        (TimeoutError(), "timeout"),
        (httpx.ReadError("connection reset"), "read"),
        (httpx.WriteError("broken pipe"), "read"),
        (httpx.RemoteProtocolError("malformed"), "protocol"),
        (httpx.DecodingError("bad gzip"), "protocol"),
        (httpx.UnsupportedProtocol("ftp"), "invalid_url"),
        (httpx.ProxyError("proxy refused"), "connect"),
        (FetchError(ErrorKind.TOO_LARGE, "big"), "too_large"),
    ],
)
def test_classify_maps_transport_exceptions_to_kinds(exc: BaseException, kind: str) -> None:
    """Each failure a transport raises lands on its contract error kind, with a message."""
    error = classify(exc)
    assert error.kind.value == kind
    assert error.failure.message


def test_a_connect_timeout_is_a_timeout_that_says_connect() -> None:
    """Missing the connect deadline is kind timeout, and the message says it was the connect step."""
    error = classify(httpx.ConnectTimeout("no connection to h:1 within 0.5 s"))
    assert error.kind is ErrorKind.TIMEOUT
    assert "connect" in error.failure.message


def test_a_deadline_timeout_names_the_deadline() -> None:
    """The attempt's own deadline passing is a timeout whose message names the seconds."""
    error = classify(TimeoutError(), deadline=2.5)
    assert error.kind is ErrorKind.TIMEOUT
    assert "2.5" in error.failure.message


def test_an_exception_without_text_still_gets_a_message() -> None:
    """A failure with an empty message is described by its type, never by an empty string."""
    assert classify(httpx.ReadError("")).failure.message == "ReadError"


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("k"), asyncio.CancelledError()])
def test_classify_re_raises_what_is_not_a_request_failure(exc: BaseException) -> None:
    """Bugs and cancellation are not error kinds: classify re-raises them."""
    with pytest.raises(type(exc)):
        classify(exc)


# -- each kind for real -----------------------------------------------------------------------------


async def test_a_name_that_does_not_resolve_is_dns() -> None:
    """A host name that does not resolve gives error kind dns and no status."""
    [record] = await collect(["http://no-such-host.invalid/"], retries=0)
    assert _kind(record) is ErrorKind.DNS
    assert record.status is None
    assert record.final_url is None


async def test_a_refused_connection_is_connect() -> None:
    """A port with nothing listening gives error kind connect."""
    [record] = await collect([f"http://127.0.0.1:{unused_port()}/"], retries=0)
    assert _kind(record) is ErrorKind.CONNECT
    assert record.status is None


async def test_an_untrusted_certificate_is_tls(tls_server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate signed by an unknown authority gives error kind tls."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    [record] = await collect([tls_server.url("/ok")], retries=0)
    assert _kind(record) is ErrorKind.TLS
    assert record.status is None


async def test_insecure_skips_certificate_verification(tls_server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With insecure=True (-k) the same untrusted server answers."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    [record] = await collect([tls_server.url("/ok")], insecure=True)
    assert record.error is None
    assert record.status == 200


async def test_ssl_cert_file_is_trusted(tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SSL_CERT_FILE naming the authority, the certificate verifies and the request succeeds."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    [record] = await collect([tls_server.url("/ok")])
    assert record.error is None, record.error
    assert record.status == 200


async def test_a_server_that_never_answers_is_timeout(server: TestServer) -> None:
    """No response head within the timeout gives error kind timeout and no status."""
    started = time.monotonic()
    [record] = await collect([server.url("/stall-headers")], timeout=0.5, retries=0)
    assert _kind(record) is ErrorKind.TIMEOUT
    assert record.status is None
    assert time.monotonic() - started < 5


async def test_a_dripping_body_ends_at_the_timeout(server: TestServer) -> None:
    """A server sending one byte a second still ends at the timeout (2 s), not after the whole drip."""
    started = time.monotonic()
    [record] = await collect([server.url("/drip/30?interval=1")], timeout=2, retries=0)
    took = time.monotonic() - started
    assert _kind(record) is ErrorKind.TIMEOUT
    assert record.status == 200  # the failure came after the headers
    assert record.sha256 is None
    assert 1.5 <= took < 5
    assert 1500 <= record.elapsed_ms < 5000


class _SilentResolver(Resolver):
    """A resolver that never answers: the connection step can only time out."""

    async def resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_missing_the_connect_deadline_is_timeout() -> None:
    """A connection not established within the connect deadline gives kind timeout, well before the timeout."""
    pool = ConnectionPool(connect_timeout=0.3, resolver=_SilentResolver())
    try:
        started = time.monotonic()
        [record] = await collect(["http://slow.invalid/"], transport=pool, timeout=20, retries=0)
    finally:
        await pool.aclose()
    assert _kind(record) is ErrorKind.TIMEOUT
    assert record.error is not None
    assert "connect" in record.error.message
    assert time.monotonic() - started < 5


async def test_a_reset_connection_is_read(server: TestServer) -> None:
    """A connection reset while waiting for the response gives error kind read."""
    [record] = await collect([server.url("/reset")], retries=0)
    assert _kind(record) is ErrorKind.READ
    assert record.status is None


@pytest.mark.parametrize("path", ["/close", "/garbage"])
async def test_a_silent_close_or_garbage_is_protocol(server: TestServer, path: str) -> None:
    """A server that hangs up without an answer, or answers with non-HTTP bytes, gives error kind protocol."""
    [record] = await collect([server.url(path)], retries=0)
    assert _kind(record) is ErrorKind.PROTOCOL
    assert record.status is None


async def test_a_truncated_body_is_protocol_with_the_status_kept(server: TestServer) -> None:
    """A body shorter than its Content-Length is a protocol error; status stays set, no digest."""
    [record] = await collect([server.url("/truncated/10000")], retries=0)
    assert _kind(record) is ErrorKind.PROTOCOL
    assert record.status == 200
    assert record.sha256 is None
    assert not record.ok


async def test_too_many_redirects_keeps_the_status(server: TestServer) -> None:
    """More hops than max_redirects is too_many_redirects, with the redirect's status kept."""
    [record] = await collect([server.url("/redirect/5")], max_redirects=2)
    assert _kind(record) is ErrorKind.TOO_MANY_REDIRECTS
    assert record.status == 302
    assert len(record.redirects) == 2
    assert record.attempts == 1


async def test_a_body_past_max_size_is_too_large_with_the_status_kept(server: TestServer) -> None:
    """A body larger than max_size is too_large; status stays set and there is no digest."""
    [record] = await collect([server.url("/bytes/5000")], max_size=1000)
    assert _kind(record) is ErrorKind.TOO_LARGE
    assert record.status == 200
    assert record.sha256 is None
    assert record.attempts == 1


async def test_a_body_of_exactly_max_size_is_complete(server: TestServer) -> None:
    """max_size is the largest body accepted: a body of exactly that size completes."""
    [record] = await collect([server.url("/bytes/1000")], max_size=1000)
    assert record.error is None
    assert record.size == 1000


async def test_max_size_counts_decoded_bytes(server: TestServer) -> None:
    """max_size applies after content-decoding: a tiny gzip body of 5000 bytes is too large for 1000."""
    [record] = await collect([server.url("/gzip/5000")], max_size=1000)
    assert _kind(record) is ErrorKind.TOO_LARGE
    assert record.status == 200


async def test_a_gzip_bomb_is_cut_off_cheaply(server: TestServer) -> None:
    """A body that inflates to 200 MB stops as too_large soon after max_size, without inflating it all."""
    started = time.monotonic()
    [record] = await collect([server.url("/gzip/200000000")], max_size=100_000, timeout=30)
    assert _kind(record) is ErrorKind.TOO_LARGE
    assert record.size <= 100_000 + 1024 * 1024  # bounded decoding steps, not the whole bomb
    assert time.monotonic() - started < 15


async def test_status_404_is_not_an_error(server: TestServer) -> None:
    """A 404 is a completed request: no error, not ok, body hashed."""
    [record] = await collect([server.url("/nowhere")])
    assert record.status == 404
    assert record.error is None
    assert not record.ok
    assert record.sha256 is not None
