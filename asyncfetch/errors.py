"""The error vocabulary of asyncfetch, and the one place foreign exceptions are translated.

Every failed request ends as a record whose ``error.kind`` is one of :class:`ErrorKind`::

    invalid_input        the input line is not a request (bad JSON, unknown key, ...)
    invalid_url          the URL cannot be fetched (bad syntax, empty host, not http/https)
    dns                  the host name does not resolve
    connect              the TCP connection could not be established (refused, unreachable)
    tls                  the TLS handshake failed (certificate, protocol)
    timeout              the attempt's deadline, or the connect deadline, passed
    read                 the connection broke while the response was being read
    protocol             the server spoke broken HTTP, or hung up without a complete answer
    too_many_redirects   more hops than ``max_redirects``
    too_large            the body grew past ``max_size`` (counted after content-decoding)
    host_unreachable     not sent: its host had ``max_host_errors`` connect/timeout failures in a row
    save                 the body could not be stored under ``save_dir`` (a full or read-only disk)

Transports (ours, httpx's own, respx mocks) raise httpx exceptions; :func:`classify` is the
single boundary that turns those, and the few builtin ones the engine sees, into a
:class:`FetchError`. Anything it does not recognise is a bug and propagates.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum

import httpx

from asyncfetch.values import Value


class ErrorKind(StrEnum):
    """The kinds of failure a record can carry, as written in ``error.kind``."""

    INVALID_INPUT = "invalid_input"
    INVALID_URL = "invalid_url"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    READ = "read"
    PROTOCOL = "protocol"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TOO_LARGE = "too_large"
    HOST_UNREACHABLE = "host_unreachable"
    SAVE = "save"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Failure(Value):
    """Why a request failed: the record's ``error`` field."""

    kind: ErrorKind
    message: str


class StateError(Exception):
    """The state file cannot be used (not ours, in use by another run, unwritable): a usage error.

    Raised by :mod:`asyncfetch.state`; declared here so that catching it does not load sqlite3.
    """


class FetchError(Exception):
    """An expected failure of one request, raised inside the engine until it becomes a record."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.failure = Failure(kind, message)

    @property
    def kind(self) -> ErrorKind:
        return self.failure.kind


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from, outermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def classify(exc: BaseException, *, deadline: float | None = None) -> FetchError:
    """Translate an exception raised while fetching into a :class:`FetchError`.

    ``deadline`` is the attempt's total deadline in seconds, named in timeout messages.
    Exceptions that are not failures of the request (bugs, cancellation) are re-raised.
    """
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        if isinstance(exc, httpx.ConnectTimeout):
            return FetchError(ErrorKind.TIMEOUT, f"connect timeout: {_message(exc)}")
        if isinstance(exc, TimeoutError) and deadline is not None:
            return FetchError(ErrorKind.TIMEOUT, f"no complete response within {deadline:g} s")
        return FetchError(ErrorKind.TIMEOUT, _message(exc))
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return FetchError(ErrorKind.INVALID_URL, _message(exc))
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        causes = _causes(exc)
        if any(isinstance(c, socket.gaierror) for c in causes):
            return FetchError(ErrorKind.DNS, _message(exc))
        if any(isinstance(c, ssl.SSLError | ssl.CertificateError) for c in causes):
            return FetchError(ErrorKind.TLS, _message(exc))
        text = _message(exc)
        # httpx's own transport flattens the cause into the message only.
        if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
            return FetchError(ErrorKind.DNS, text)
        if "CERTIFICATE" in text or "SSL" in text or "TLS" in text:
            return FetchError(ErrorKind.TLS, text)
        return FetchError(ErrorKind.CONNECT, text)
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return FetchError(ErrorKind.READ, _message(exc))
    if isinstance(exc, httpx.ProtocolError | httpx.DecodingError):
        return FetchError(ErrorKind.PROTOCOL, _message(exc))
    if isinstance(exc, httpx.TransportError):
        return FetchError(ErrorKind.CONNECT, _message(exc))
    raise exc
