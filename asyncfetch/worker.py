"""The workers stage: one attempt at a request, redirects followed, body streamed, record made.

An attempt is the whole redirect chain under one hard deadline (``timeout``): connect,
request, every hop, every body byte. The body is never held unless ``--body`` asks for it:
it is content-decoded in bounded steps, hashed, counted against ``max_size`` and, with
``--save``, written to a temporary file that only becomes the saved file when complete.
:func:`asyncfetch.retry.retry_delay` then decides whether the outcome deserves another attempt.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from asyncfetch.deadline import Deadlines
from asyncfetch.decode import Decoder
from asyncfetch.errors import ErrorKind, Failure, FetchError, classify
from asyncfetch.http import wire_headers
from asyncfetch.options import FetchOptions
from asyncfetch.record import NOT_ASKED, Record, Redirect, Timings, iso_utc
from asyncfetch.save import BodyFile, BodySaver, SaveError
from asyncfetch.spec import RequestSpec
from asyncfetch.transport import REMOTE, SSL_OBJECT, TIMER, PhaseTimer
from asyncfetch.values import MutableValue, Value

if TYPE_CHECKING:
    from asyncfetch.state import Stored

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NOT_MODIFIED = 304
# Errors raised before any byte of the request left this machine: safe to retry any method.
_NOT_SENT = frozenset({ErrorKind.DNS, ErrorKind.CONNECT, ErrorKind.TLS})
# The stream of every request without a body: a ByteStream holds its bytes and can be read again.
_NO_BODY = httpx.ByteStream(b"")
# A redirect's own body is read (to keep the connection) only up to this much.
_DRAIN_LIMIT = 64 * 1024


@dataclass(slots=True, eq=False, repr=False)
class _Progress(MutableValue):
    """What one attempt has learnt so far: the record's fields if it fails midway."""

    url: httpx.URL
    status: int | None = None
    http_version: str | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str | None = None
    headers: dict[str, str] | None = None
    body: str | None = None
    body_encoding: str | None = None
    saved_to: str | None = None
    content_encoding: str | None = None
    retry_after: float | None = None
    remote: tuple[str, int] | None = None
    ssl_object: Any = None
    timer: PhaseTimer | None = None
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Outcome(Value):
    """One attempt's record, and what the response said about trying again."""

    record: Record
    retry_after: float | None
    not_sent: bool


class Worker:
    """Performs attempts for the engine's worker tasks; one instance serves them all."""

    def __init__(self, options: FetchOptions, transport: httpx.AsyncBaseTransport, saver: BodySaver | None) -> None:
        self._options = options
        self._transport = transport
        self._saver = saver
        self._fields = options.record_fields
        self._deadlines: Deadlines | None = None  # made on the first attempt: it needs the loop

    async def attempt(
        self, spec: RequestSpec, attempts: int, *, tracked: bool = False, stored: Stored | None = None
    ) -> Outcome:
        """Make attempt number ``attempts`` at ``spec``; failures are returned, never raised.

        ``tracked`` (``--state``): the record says whether the body ``changed`` since ``stored``,
        what the last run learnt (None: first sight), whose validators make the request conditional.
        """
        deadline = spec.timeout or self._options.timeout
        started = time.time()
        clock = time.perf_counter()
        progress = _Progress(spec.target)
        redirects: list[Redirect] = []
        failure = None
        not_sent = False
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = Deadlines(asyncio.get_running_loop())
        try:
            with deadlines.limit(deadline):
                await self._exchange(spec, progress, redirects, stored)
        except Exception as exc:  # noqa: BLE001  (classify re-raises what is not a request failure)
            error = classify(exc, deadline=deadline)
            failure = error.failure
            not_sent = error.kind in _NOT_SENT or isinstance(exc, httpx.ConnectTimeout)
            progress.sha256 = None
            progress.saved_to = None
        elapsed_ms = round((time.perf_counter() - clock) * 1000, 3)
        options = self._options
        remote = progress.remote
        record = Record(
            url=spec.url,
            index=spec.index,
            id=spec.id,
            input=spec.input,
            method=spec.method,
            status=progress.status,
            final_url=str(progress.url) if progress.status is not None else None,
            redirects=tuple(redirects),
            http_version=progress.http_version,
            remote_ip=remote[0] if remote is not None else None,
            remote_port=remote[1] if remote is not None else None,
            content_type=progress.content_type,
            size=progress.size,
            sha256=progress.sha256,
            elapsed_ms=elapsed_ms,
            attempts=attempts,
            error=failure,
            fetched_at=iso_utc(started),
            headers=progress.headers,
            body=progress.body,
            body_encoding=progress.body_encoding,
            saved_to=progress.saved_to,
            content_encoding=progress.content_encoding,
            timings=_timings(progress.timer, elapsed_ms) if options.timings else None,
            tls=_tls(progress.ssl_object) if options.tls else NOT_ASKED,
            fields=self._fields,
            changed=_changed(progress, stored) if tracked and failure is None else None,
            etag=progress.etag if tracked else None,
            last_modified=progress.last_modified if tracked else None,
        )
        return Outcome(record, progress.retry_after, not_sent)

    def refused(self, spec: RequestSpec, attempts: int, message: str) -> Record:
        """The record of a request not sent because its host is given up (``--max-host-errors``)."""
        return Record(
            url=spec.url,
            index=spec.index,
            id=spec.id,
            method=spec.method,
            attempts=attempts,
            error=Failure(ErrorKind.HOST_UNREACHABLE, message),
        )

    async def _exchange(
        self, spec: RequestSpec, progress: _Progress, redirects: list[Redirect], stored: Stored | None
    ) -> None:
        options = self._options
        method, url, headers, body = spec.method, spec.target, spec.headers, spec.body
        if stored is not None:
            headers = _conditional(headers, stored)
        while True:
            progress.status = None  # until this hop answers: a failed hop has no status of its own
            progress.remote = progress.ssl_object = None
            request = httpx.Request(method, url, headers=headers, stream=httpx.ByteStream(body) if body else _NO_BODY)
            request.read()  # a ByteStream: makes ``request.content`` available to every transport
            if options.timings:
                # Each hop is timed afresh: the record shows the phases of the final response.
                progress.timer = PhaseTimer()
                request.extensions = {**request.extensions, TIMER: progress.timer}
            response = await self._transport.handle_async_request(request)
            stream = _body_stream(response)
            try:
                progress.remote, progress.ssl_object = _connection_facts(response)
                status = response.status_code
                progress.url = url
                progress.status = status
                progress.http_version = response.http_version
                fields = _ResponseFields(response.headers)
                progress.content_type = fields.content_type
                progress.etag = fields.etag
                progress.last_modified = fields.last_modified
                progress.retry_after = _retry_after(fields.retry_after) if status in (429, 503) else None
                if options.include_headers:
                    progress.headers = _header_dict(response.headers)
                location = fields.location if status in _REDIRECTS else None
                if location is None or not options.follow:
                    await self._read_body(spec, response, stream, fields.content_encoding, progress, stored)
                    return
                if len(redirects) >= options.max_redirects:
                    raise FetchError(
                        ErrorKind.TOO_MANY_REDIRECTS, f"more than {options.max_redirects} redirects (next: {location})"
                    )
                redirects.append(Redirect(status, str(url)))
                next_url = _redirect_target(url, location)
                await _drain(stream)
            finally:
                # Not response.aclose(): all it adds is a context manager that tags errors with
                # the request, a cost per response for nothing that reads them.
                await stream.aclose()
            dropped = {b"host"}
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                method, body = "GET", None
                dropped |= {b"content-type", b"content-length"}
            if (next_url.scheme, next_url.host, next_url.port) != (url.scheme, url.host, url.port):
                # Credentials meant for one host are not handed to another (curl does the same).
                dropped |= {b"authorization", b"cookie"}
            kept = tuple((k, v) for k, v in headers if k.lower() not in dropped)
            headers = wire_headers(next_url, method, kept, body)
            url = next_url

    async def _read_body(
        self,
        spec: RequestSpec,
        response: httpx.Response,
        stream: httpx.AsyncByteStream,
        content_encoding: str | None,
        progress: _Progress,
        stored: Stored | None,
    ) -> None:
        decoder = Decoder(content_encoding)
        progress.content_encoding = decoder.undecoded
        # A 304 has no body by definition: nothing to save (the earlier run's file still holds it).
        not_modified = response.status_code == _NOT_MODIFIED
        saving = None if not_modified else self._start_saving(progress.url, spec.index)
        body = _Body(progress, self._options.max_size, keep=self._options.include_body, saving=saving)
        try:
            async for raw in stream:
                if decoder.identity:
                    body.take(raw)
                else:
                    for data in decoder.decode(raw):
                        body.take(data)
            for data in decoder.flush():
                body.take(data)
        except BaseException:
            if saving is not None:
                saving.discard()
            raise
        progress.sha256 = body.hasher.hexdigest()
        if stored is not None and stored.saved_to is not None and (not_modified or progress.sha256 == stored.sha256):
            # --state: unchanged since the run that saved it; that file is this body, not rewritten.
            if saving is not None:
                saving.discard()
                saving = None
            progress.saved_to = stored.saved_to
        if saving is not None:
            try:
                progress.saved_to = saving.commit()
            except OSError as exc:
                raise SaveError(saving.location, exc) from exc
        if body.kept is not None:
            progress.body, progress.body_encoding = _body_text(b"".join(body.kept), response)

    def _start_saving(self, url: httpx.URL, index: int) -> BodyFile | None:
        if self._saver is None:
            return None
        try:
            return self._saver.start(url, index)
        except OSError as exc:
            raise SaveError(self._saver.directory, exc) from exc


class _Body:
    """Where the decoded body goes, piece by piece: counted, hashed, kept or saved."""

    __slots__ = ("hasher", "kept", "limit", "progress", "saving")

    def __init__(self, progress: _Progress, limit: int, *, keep: bool, saving: BodyFile | None) -> None:
        self.progress = progress
        self.limit = limit
        self.hasher = hashlib.sha256()
        self.kept: list[bytes] | None = [] if keep else None
        self.saving = saving

    def take(self, data: bytes) -> None:
        progress = self.progress
        progress.size += len(data)
        if progress.size > self.limit:
            raise FetchError(ErrorKind.TOO_LARGE, f"body larger than --max-size ({self.limit} bytes)")
        self.hasher.update(data)
        if self.kept is not None:
            self.kept.append(data)
        if self.saving is not None:
            try:
                self.saving.write(data)
            except OSError as exc:
                raise SaveError(self.saving.location, exc) from exc


class _ResponseFields:
    """The few response headers the worker needs, found in one pass (no repeated lookups)."""

    __slots__ = ("content_encoding", "content_type", "etag", "last_modified", "location", "retry_after")

    def __init__(self, headers: httpx.Headers) -> None:
        self.content_type: str | None = None
        self.content_encoding: str | None = None
        self.location: str | None = None
        self.retry_after: str | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        # The raw pairs, and only the wanted values decoded: multi_items() decodes every header.
        for raw_name, raw_value in headers.raw:
            name = raw_name.lower()
            if name not in _WANTED:
                continue
            value = _header_text(raw_value, headers)
            if name == b"etag":
                self.etag = value
            elif name == b"last-modified":
                self.last_modified = value
            elif name == b"content-type":
                self.content_type = value
            elif name == b"content-encoding":
                self.content_encoding = f"{self.content_encoding}, {value}" if self.content_encoding else value
            elif name == b"location":
                self.location = value
            else:
                self.retry_after = value


_WANTED = frozenset({b"etag", b"last-modified", b"content-type", b"content-encoding", b"location", b"retry-after"})


def _header_text(value: bytes, headers: httpx.Headers) -> str:
    """A header value as httpx's ``multi_items()`` gives it (ASCII unless another header is not)."""
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return value.decode(headers.encoding)


def _connection_facts(response: httpx.Response) -> tuple[tuple[str, int] | None, Any]:
    """The peer ``(ip, port)`` and the ``SSLObject`` of the connection that gave ``response``."""
    extensions = response.extensions
    if REMOTE in extensions:  # our pool
        return extensions[REMOTE], extensions[SSL_OBJECT]
    stream = extensions.get("network_stream")  # httpx's transports (HTTP/2, proxies): httpcore's stream
    if stream is None:
        return None, None
    peer = stream.get_extra_info("server_addr")
    remote = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
    return remote, stream.get_extra_info("ssl_object")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _timings(timer: PhaseTimer | None, total_ms: float) -> Timings:
    if timer is None:
        return Timings(total=total_ms)
    ttfb = None
    if timer.sent is not None and timer.first_byte is not None:
        ttfb = _ms(max(0.0, timer.first_byte - timer.sent))
    return Timings(dns=_ms(timer.dns), connect=_ms(timer.connect), tls=_ms(timer.tls), ttfb=ttfb, total=total_ms)


def _tls(ssl_object: Any) -> dict[str, Any] | None:
    if ssl_object is None:
        return None
    from asyncfetch.tlsfacts import describe

    return describe(ssl_object)


def _conditional(headers: tuple[tuple[bytes, bytes], ...], stored: Stored) -> tuple[tuple[bytes, bytes], ...]:
    """``headers`` with If-None-Match / If-Modified-Since from ``stored``, unless the user set them."""
    names = {name.lower() for name, _ in headers}
    extra: list[tuple[bytes, bytes]] = []
    if stored.etag is not None and b"if-none-match" not in names:
        extra.append((b"If-None-Match", stored.etag.encode("latin-1", "replace")))
    if stored.last_modified is not None and b"if-modified-since" not in names:
        extra.append((b"If-Modified-Since", stored.last_modified.encode("latin-1", "replace")))
    return headers + tuple(extra) if extra else headers


def _changed(progress: _Progress, stored: Stored | None) -> bool:
    """--state: whether this complete response differs from what the last run stored."""
    if progress.status == _NOT_MODIFIED:
        return False  # the server says so (to our validators, or to the user's own)
    if stored is None:
        return True  # first sight
    return progress.sha256 != stored.sha256


def _body_stream(response: httpx.Response) -> httpx.AsyncByteStream:
    """The response body as sent (not content-decoded); bypasses httpx's per-chunk bookkeeping."""
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError("the transport returned a response without an async body stream")
    return stream


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait, from a ``Retry-After`` of seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _redirect_target(url: httpx.URL, location: str) -> httpx.URL:
    try:
        target = url.join(location.strip())
    except (httpx.InvalidURL, ValueError) as exc:
        raise FetchError(ErrorKind.INVALID_URL, f"redirect to a malformed URL {location!r}: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise FetchError(ErrorKind.INVALID_URL, f"redirect to an unfetchable URL {location!r}")
    return target


async def _drain(stream: httpx.AsyncByteStream) -> None:
    """Read a redirect's small body so its connection can be reused; give up on a big one."""
    read = 0
    async for chunk in stream:
        read += len(chunk)
        if read > _DRAIN_LIMIT:
            break


def _header_dict(headers: httpx.Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.multi_items():
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _body_text(body: bytes, response: httpx.Response) -> tuple[str, str | None]:
    """The body as text when it is text in its declared charset (or UTF-8), else base64."""
    charset = response.charset_encoding or "utf-8"
    if b"\0" not in body:
        try:
            return body.decode(charset), None
        except (UnicodeDecodeError, LookupError):
            pass
    return base64.b64encode(body).decode("ascii"), "base64"
