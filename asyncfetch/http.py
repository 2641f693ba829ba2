"""The HTTP vocabulary every layer shares: origins, default ports, idempotent methods, header rules.

A leaf: it imports nothing of asyncfetch, so the transport (the lowest layer) and the input
parser (the highest engine layer) can both read it without leaning on each other.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}
# Methods a server must treat the same whether they arrive once or twice: safe to send again.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

# RFC 9110 §5.6.2: method and header names are tokens.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class Origin(NamedTuple):
    """Where a request goes: scheme, host (IDNA, lower-case) and port. Connections and
    ``--per-host`` limits are per origin."""

    scheme: str
    host: str
    port: int


def origin_of(url: httpx.URL) -> Origin:
    """The origin a request to ``url`` is sent to."""
    scheme = url.scheme
    return Origin(scheme, url.raw_host.decode("ascii").lower(), url.port or DEFAULT_PORTS[scheme])


def is_token(text: str) -> bool:
    """Whether ``text`` may be a method or header name."""
    return _TOKEN.match(text) is not None


def check_header(name: str, value: str) -> None:
    """Raise :class:`ValueError` naming the problem if ``name: value`` cannot be sent as a header."""
    if not is_token(name):
        raise ValueError(f"invalid header name {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} has a line break or NUL in its value")


def wire_headers(
    url: httpx.URL,
    method: str,
    headers: tuple[tuple[bytes, bytes], ...],
    body: bytes | None,
    given: frozenset[bytes] | None = None,
) -> tuple[tuple[bytes, bytes], ...]:
    """``headers`` completed with what HTTP/1.1 needs: ``Host`` (unless given) and ``Content-Length``.

    Built once per request, so that sending it is cheap (``httpx.Request(stream=...)``
    takes headers as they are). ``given``: the lower-cased names in ``headers``, when known.
    """
    if given is None:
        given = header_names(headers)
    host = () if b"host" in given else ((b"Host", url.netloc),)
    framing: tuple[tuple[bytes, bytes], ...] = ()
    if b"content-length" not in given and b"transfer-encoding" not in given:
        if body:
            framing = ((b"Content-Length", str(len(body)).encode("ascii")),)
        elif method in ("POST", "PUT", "PATCH"):
            framing = ((b"Content-Length", b"0"),)
    return host + headers + framing


def header_names(headers: tuple[tuple[bytes, bytes], ...]) -> frozenset[bytes]:
    """The names in ``headers``, lower-cased."""
    return frozenset(name.lower() for name, _ in headers)
