"""One result per request: the :class:`Record`, and the JSON line the CLI writes for it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from asyncfetch.errors import Failure
from asyncfetch.values import Value


class _NoId:
    """Marks a request whose input had no ``id`` key (``None`` is a valid id)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_ID"


NO_ID: Any = _NoId()


class _NotAsked:
    """Marks an optional field whose option is off: the key is left out (``None`` shows as null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_ASKED"


NOT_ASKED: Any = _NotAsked()

# Every key a record can have, in the order they appear (``--fields`` chooses among them).
RECORD_FIELDS = (
    "url",
    "index",
    "id",
    "input",
    "method",
    "status",
    "ok",
    "final_url",
    "redirects",
    "http_version",
    "remote_ip",
    "remote_port",
    "content_type",
    "size",
    "sha256",
    "elapsed_ms",
    "attempts",
    "error",
    "fetched_at",
    "headers",
    "body",
    "body_encoding",
    "saved_to",
    "content_encoding",
    "timings",
    "tls",
    "changed",
    "etag",
    "last_modified",
)

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


class Outcome(StrEnum):
    """How a request ended, for counts and exit statuses: the one place the split is made."""

    OK = "ok"  # a response below 400
    HTTP_ERROR = "http"  # a response of 400 or more (not an error record)
    FAILED = "failed"  # an error record


def outcome_of(error_kind: str | None, status: int | None) -> Outcome:
    """The outcome of a record with this error kind (None: no error) and status."""
    if error_kind is not None:
        return Outcome.FAILED
    if status is not None and status >= 400:
        return Outcome.HTTP_ERROR
    return Outcome.OK


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Redirect(Value):
    """One hop followed: the URL that answered with a redirect, and its status."""

    status: int
    url: str


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class Timings(Value):
    """Where the time of the last attempt went, in milliseconds (``--timings``).

    ``dns``, ``connect`` and ``tls`` are those of the connection that gave the final response,
    None when that phase did not happen (a reused connection, an IP address, plain HTTP, or a
    failure before it); ``ttfb`` is from the request sent to the first byte of the response;
    ``total`` is the whole attempt (``elapsed_ms``). Through a proxy, ``dns`` is None (the proxy
    resolves) and ``connect`` runs until the stream through the proxy is open (see
    :class:`asyncfetch.client.ProxyPhases`).
    """

    dns: float | None = None
    connect: float | None = None
    tls: float | None = None
    ttfb: float | None = None
    total: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"dns": self.dns, "connect": self.connect, "tls": self.tls, "ttfb": self.ttfb, "total": self.total}


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, repr=False)
class Record(Value):
    """The outcome of one request, field for field the contract's JSON record."""

    url: str
    index: int
    method: str
    id: Any = NO_ID
    input: dict[str, str] | None = None
    status: int | None = None
    final_url: str | None = None
    redirects: tuple[Redirect, ...] = ()
    http_version: str | None = None
    remote_ip: str | None = None
    remote_port: int | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str | None = None
    elapsed_ms: float = 0.0
    attempts: int = 0
    error: Failure | None = None
    fetched_at: str = field(default_factory=lambda: iso_utc(time.time()))
    headers: dict[str, str] | None = None
    body: str | None = None
    body_encoding: str | None = None
    saved_to: str | None = None
    # Only when a coding could not be undone: the codings the recorded body is still in.
    content_encoding: str | None = None
    timings: Timings | None = None
    tls: Any = NOT_ASKED  # with --tls: the facts of an HTTPS response, None for any other
    # --fields: the keys this record's JSON keeps (None: all of them). Shared by every record.
    fields: frozenset[str] | None = field(default=None, repr=False, compare=False)
    # --state: whether the body differs from the last run's (None: no complete response), and
    # the response's validators, when it had them.
    changed: bool | None = None
    etag: str | None = None
    last_modified: str | None = None

    @property
    def ok(self) -> bool:
        """The request completed and its status is below 400."""
        return self.error is None and self.status is not None and self.status < 400

    @property
    def outcome(self) -> Outcome:
        return outcome_of(None if self.error is None else self.error.kind.value, self.status)

    def to_dict(self) -> dict[str, Any]:
        """The record as the contract's JSON object, keys in the contract's order."""
        out: dict[str, Any] = {"url": self.url, "index": self.index}
        if self.id is not NO_ID:
            out["id"] = self.id
        if self.input is not None:
            out["input"] = self.input
        out["method"] = self.method
        out["status"] = self.status
        out["ok"] = self.ok
        out["final_url"] = self.final_url
        out["redirects"] = [{"status": r.status, "url": r.url} for r in self.redirects]
        out["http_version"] = self.http_version
        out["remote_ip"] = self.remote_ip
        out["remote_port"] = self.remote_port
        out["content_type"] = self.content_type
        out["size"] = self.size
        out["sha256"] = self.sha256
        out["elapsed_ms"] = self.elapsed_ms
        out["attempts"] = self.attempts
        error = self.error
        out["error"] = None if error is None else {"kind": error.kind.value, "message": error.message}
        out["fetched_at"] = self.fetched_at
        if self.headers is not None:
            out["headers"] = self.headers
        if self.body is not None:
            out["body"] = self.body
            if self.body_encoding is not None:
                out["body_encoding"] = self.body_encoding
        if self.saved_to is not None:
            out["saved_to"] = self.saved_to
        if self.content_encoding is not None:
            out["content_encoding"] = self.content_encoding
        if self.timings is not None:
            out["timings"] = self.timings.to_dict()
        if self.tls is not NOT_ASKED:
            out["tls"] = self.tls
        if self.changed is not None:
            out["changed"] = self.changed
        if self.etag is not None:
            out["etag"] = self.etag
        if self.last_modified is not None:
            out["last_modified"] = self.last_modified
        if self.fields is not None:
            return {key: value for key, value in out.items() if key in self.fields}
        return out

    def to_line(self) -> bytes:
        """The bytes the CLI writes for this record: one line of UTF-8 JSON with its newline."""
        fields = self.to_dict()
        try:
            return (_encode(fields) + "\n").encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (an input ``id`` of "\\ud800") has no UTF-8 form:
            # escape everything rather than write a line jq would reject.
            return (_encode_ascii(fields) + "\n").encode("ascii")

    def to_json(self) -> str:
        """The record as one line of JSON, without the newline."""
        return self.to_line()[:-1].decode("utf-8")


# The last second formatted, and its text: records come thousands a second, and strftime is
# most of the cost of this field.
_last_second: list[Any] = [None, ""]


def iso_utc(timestamp: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-22T01:23:45.123Z``."""
    seconds = int(timestamp)
    millis = int((timestamp - seconds) * 1000)
    last = _last_second
    if last[0] != seconds:
        last[0], last[1] = seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{last[1]}.{millis:03d}Z"
