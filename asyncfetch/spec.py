"""The requests stage: one input line (or mapping) in, a :class:`RequestSpec` or an error record out.

A line starting with ``{`` is a JSON request object; anything else is a URL. A URL without
a scheme gets ``https://``; only http and https are fetched. Nothing here touches the
network: what cannot be fetched becomes an ``invalid_input`` or ``invalid_url`` record.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx
from httpx._urlparse import MAX_URL_LENGTH, ParseResult

from asyncfetch.decode import ACCEPT_ENCODING
from asyncfetch.errors import ErrorKind, Failure
from asyncfetch.http import DEFAULT_PORTS, check_header, header_names, is_token, wire_headers
from asyncfetch.options import DEFAULT_USER_AGENT, FetchOptions
from asyncfetch.record import NO_ID, NOT_ASKED, Record, Timings
from asyncfetch.values import Value

_REQUEST_KEYS = frozenset({"url", "method", "headers", "body", "json", "timeout", "id"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_PORT_AFTER_HOST = re.compile(r"^\d+(?:[/?#]|$)")
_HOST = re.compile(r"^[A-Za-z0-9_~-]+(?:\.[A-Za-z0-9_~-]+)*\.?$")


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RequestSpec(Value):
    """One request to make, parsed and validated: everything a worker needs.

    ``headers`` are the request's headers as sent, ``Host`` and ``Content-Length`` included.
    """

    index: int
    url: str
    target: httpx.URL
    method: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None = None
    timeout: float | None = None
    id: Any = NO_ID
    input: dict[str, str] | None = None  # the other columns of a CSV/TSV row


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class TableRow(Value):
    """One row of CSV or TSV input: its URL cell, its other columns, or why it does not parse.

    The columns are carried into the record as ``input``, so results join back to their data.
    A row with a ``problem`` becomes an ``invalid_input`` record saying so.
    """

    url: str
    input: dict[str, str] | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RequestShape(Value):
    """The request options of the command line (-X, -H, -d, -A) as a value that can travel.

    Lines taken from a queue carry the options they were enqueued with (:class:`ShapedLine`),
    so a worker builds them exactly as the one-machine command would have.
    """

    method: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    data: bytes | None = None
    user_agent: str | None = None

    def apply(self, options: FetchOptions) -> FetchOptions:
        """``options`` with these request options in place of its own."""
        return replace(
            options,
            method=self.method,
            headers=self.headers,
            data=self.data,
            user_agent=self.user_agent or DEFAULT_USER_AGENT,
        )


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ShapedLine(Value):
    """An input line with request options of its own (see :class:`RequestShape`)."""

    line: str
    shape: RequestShape


class InvalidRequest(Exception):
    """A line that is not a request; carries what its record shows."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        url: str,
        method: str,
        request_id: Any = NO_ID,
        input_columns: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.failure = Failure(kind, message)
        self.url = url
        self.method = method
        self.request_id = request_id
        self.input = input_columns


def with_default_scheme(text: str) -> str:
    """``https://`` added to a URL that has no scheme (``host:port/path`` counts as none)."""
    if text.startswith(("https://", "http://")):
        return text  # as nearly every line is
    if text.startswith("//"):
        return "https:" + text
    match = _SCHEME.match(text)
    if match is None:
        return "https://" + text
    rest = text[match.end() :]
    if rest.startswith("//"):
        return text
    if _PORT_AFTER_HOST.match(rest):
        return "https://" + text  # "localhost:8080/x" is a host and a port, not a scheme
    return text  # "mailto:x@y": a scheme we will refuse, named in the error


# URLs that httpx's parser keeps exactly as written: lower-case scheme and host name, a port
# that is not the default, and a path and query of characters it leaves unescaped (no dot
# segments to remove, no fragment). Most URLs of a list are of this shape, and building their
# httpx.URL from the match is 4-8x cheaper than httpx's parse (8 % of a run on one local host).
# The path is printable ASCII but space " # < > ? ` { }, the query printable ASCII but
# space " # < > (httpx's PATH_SAFE and QUERY_SAFE). tests/test_spec.py holds the two parses
# to the same result.
_SIMPLE_URL = re.compile(
    r"(https?)://([a-z0-9_~-]+(?:\.[a-z0-9_~-]+)*\.?)(?::([1-9][0-9]{0,4}))?(/[!$-;=@-_a-z|~]*)?(?:\?([!$-;=?-~]*))?"
)


def _simple_url(text: str) -> httpx.URL | None:
    """The ``httpx.URL`` of ``text`` when it is of the simple shape above, else None."""
    match = _SIMPLE_URL.fullmatch(text) if len(text) <= MAX_URL_LENGTH else None
    if match is None:
        return None
    scheme, host, port_text, path, query = match.groups()
    if path is not None and "/." in path:
        return None  # "." and ".." segments: httpx removes them
    if _bad_ipv4(host):
        return None  # httpx's parse says what is wrong with it
    port: int | None = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            return None
        if port == DEFAULT_PORTS[scheme]:
            port = None
    url = httpx.URL.__new__(httpx.URL)
    url._uri_reference = ParseResult(scheme, "", host, port, path or "", query, None)
    return url


def _bad_ipv4(host: str) -> bool:
    """Shaped like an IPv4 address (four runs of digits), so httpx requires one, but not one."""
    if not host[-1].isdigit():
        return False  # a name, as nearly every host is
    octets = host.split(".")
    if len(octets) != 4:
        return False
    for octet in octets:
        if not octet.isdigit():
            return False
    for octet in octets:  # noqa: SIM110  (loops: a generator here costs more than the check, per URL)
        if int(octet) > 255 or (octet[0] == "0" and len(octet) > 1):
            return True
    return False


def parse_url(text: str) -> httpx.URL:
    """A fetchable ``httpx.URL`` from URL text (scheme already defaulted).

    Raises :class:`ValueError` naming the problem when the URL is not http(s) or is malformed.
    """
    simple = _simple_url(text)
    if simple is not None:
        return simple
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ValueError(f"malformed URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        shown = url.scheme or text.partition(":")[0]
        raise ValueError(f"unsupported URL scheme {shown!r}: only http and https are fetched")
    host = url.raw_host.decode("ascii", "replace")
    if not host:
        raise ValueError("URL has no host")
    if ":" not in host and not _HOST.match(host):
        raise ValueError(f"invalid host {url.host!r}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"invalid port {url.port}")
    return url


class SpecBuilder:
    """Turns input lines and mappings into request specs, under one set of options."""

    def __init__(self, options: FetchOptions) -> None:
        self._options = options
        self._plain_method = (options.method or ("POST" if options.data is not None else "GET")).upper()
        self._base_headers = _merge_headers(_default_headers(options), options.headers)
        self._base_names = header_names(self._base_headers)  # the same for every URL line
        self._fields = options.record_fields

    def from_line(self, line: str, index: int) -> RequestSpec:
        """A spec from one stripped, non-blank, non-comment input line."""
        if line.startswith("{"):
            try:
                value = json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
            except ValueError as exc:
                raise InvalidRequest(
                    ErrorKind.INVALID_INPUT, f"not a JSON request object: {exc}", line, self._plain_method
                ) from None
            if not isinstance(value, dict):
                raise InvalidRequest(ErrorKind.INVALID_INPUT, "not a JSON object", line, self._plain_method)
            return self.from_mapping(value, index, raw=line)
        return self._from_url(line, index, None)

    def from_row(self, row: TableRow, index: int) -> RequestSpec:
        """A spec from a row of CSV/TSV input: its URL cell is a URL (never a JSON object)."""
        if row.problem is not None:
            raise InvalidRequest(ErrorKind.INVALID_INPUT, row.problem, row.url, self._plain_method, NO_ID, row.input)
        return self._from_url(row.url.strip(), index, row.input)

    def _from_url(self, text: str, index: int, columns: dict[str, str] | None) -> RequestSpec:
        url_text = with_default_scheme(text)
        try:
            target = parse_url(url_text)
        except ValueError as exc:
            raise InvalidRequest(
                ErrorKind.INVALID_URL, str(exc), url_text, self._plain_method, NO_ID, columns
            ) from None
        body = self._options.data
        headers = wire_headers(target, self._plain_method, self._base_headers, body, self._base_names)
        return RequestSpec(index, url_text, target, self._plain_method, headers, body, input=columns)

    def from_mapping(self, value: Mapping[str, Any], index: int, *, raw: str | None = None) -> RequestSpec:
        """A spec from a JSON request object: ``url`` and optional ``method``, ``headers``, ..."""
        url_value = value.get("url")
        shown_url = url_value if isinstance(url_value, str) else (raw if raw is not None else repr(dict(value)))
        # An id with NaN or infinity in it cannot be echoed as JSON: the record shows null instead.
        request_id = value.get("id", NO_ID)
        finite_id = request_id is NO_ID or _is_finite(request_id)
        has_payload = "body" in value or "json" in value
        method_value = value.get("method")
        method = method_value.upper() if isinstance(method_value, str) else ("POST" if has_payload else "GET")

        def invalid(message: str, kind: ErrorKind = ErrorKind.INVALID_INPUT) -> InvalidRequest:
            return InvalidRequest(kind, message, shown_url, method, request_id if finite_id else None)

        unknown = sorted(set(value) - _REQUEST_KEYS)
        if unknown:
            raise invalid(f"unknown key{'s' if len(unknown) > 1 else ''} in request object: {', '.join(unknown)}")
        if not finite_id or not _is_finite(value.get("json")):
            raise invalid("NaN and infinite numbers are not JSON")
        if not isinstance(url_value, str) or not url_value.strip():
            raise invalid("request object needs a 'url' string")
        if method_value is not None and (not isinstance(method_value, str) or not is_token(method_value)):
            raise invalid(f"'method' must be an HTTP method name, not {method_value!r}")
        if "body" in value and "json" in value:
            raise invalid("request object has both 'body' and 'json': give one")
        body: bytes | None = None
        extra: list[tuple[str, str]] = []
        if "body" in value:
            if not isinstance(value["body"], str):
                raise invalid("'body' must be a string (use 'json' for a JSON value)")
            body = value["body"].encode("utf-8")
        elif "json" in value:
            body = json.dumps(value["json"], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            extra.append(("Content-Type", "application/json"))
        timeout = value.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf
        ):
            raise invalid(f"'timeout' must be a number of seconds above 0, not {timeout!r}")
        headers_value = value.get("headers", {})
        if not isinstance(headers_value, dict):
            raise invalid("'headers' must be an object of names to values")
        for name, header_value in headers_value.items():
            if isinstance(header_value, bool) or not isinstance(header_value, str | int | float):
                raise invalid(f"header {name!r} must have a string value")
            extra.append((name, str(header_value)))
        try:
            headers = _merge_headers(self._base_headers, extra)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        url_text = with_default_scheme(url_value.strip())
        shown_url = url_text
        try:
            target = parse_url(url_text)
        except ValueError as exc:
            raise invalid(str(exc), ErrorKind.INVALID_URL) from None
        return RequestSpec(
            index,
            url_text,
            target,
            method,
            wire_headers(target, method, headers, body),
            body,
            float(timeout) if timeout is not None else None,
            request_id,
        )

    def invalid_record(self, error: InvalidRequest, index: int) -> Record:
        """The record of a line that is not a request."""
        options = self._options
        return Record(
            url=error.url,
            index=index,
            method=error.method,
            id=error.request_id,
            input=error.input,
            error=error.failure,
            timings=Timings() if options.timings else None,
            tls=None if options.tls else NOT_ASKED,
            fields=self._fields,
        )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _is_finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a JSON-like value (a record must stay strict JSON)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_is_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_is_finite(v) for v in value)
    return True


def _default_headers(options: FetchOptions) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"User-Agent", options.user_agent.encode("latin-1", "replace")),
        (b"Accept", b"*/*"),
        (b"Accept-Encoding", ACCEPT_ENCODING),
    )


def _merge_headers(
    base: tuple[tuple[bytes, bytes], ...], extra: tuple[tuple[str, str], ...] | list[tuple[str, str]]
) -> tuple[tuple[bytes, bytes], ...]:
    """``base`` with ``extra`` laid over it: a name in ``extra`` replaces it, an empty value removes it."""
    if not extra:
        return base
    merged: dict[bytes, tuple[bytes, bytes]] = {name.lower(): (name, value) for name, value in base}
    for name, value in extra:
        check_header(name, value)
        key = name.lower().encode("ascii")
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = (name.encode("ascii"), value.encode("utf-8"))
    return tuple(merged.values())
