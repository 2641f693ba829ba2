"""Content-decoding with a bound on every step, so a compression bomb never balloons memory.

httpx's decoders inflate a whole network chunk at once (64 KB of gzip can become 64 MB; 1.5 KB
of zstd, 50 MB); these hand back at most ``step`` bytes per call to ``decode``, and the caller
counts them against ``--max-size`` as they come. Codings: gzip (and x-gzip), deflate, br
(brotli) and zstd; ``identity`` is no coding at all.

A ``Content-Encoding`` list names the codings in the order they were applied, so they are undone
from the last. A coding we cannot undo (``compress``, a made-up one) stops the decoding there:
the body stays in that coding and in every one applied before it, and :attr:`Decoder.undecoded`
says which (it becomes the record's ``content_encoding``). Never a wrong guess: the layers below
an unknown one are not attempted.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

import httpx

# What we send in Accept-Encoding is what we can decode here (brotli and zstd are dependencies).
ACCEPT_ENCODING = b"gzip, deflate, br, zstd"

_ALIASES = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "br": "br", "zstd": "zstd"}
# RFC 9659: a zstd content coding's window is at most 8 MiB; a bigger one would let a server
# make us allocate up to 2 GiB per response. (Brotli's window is at most 16 MiB by design.)
_ZSTD_WINDOW_LOG_MAX = 23


class _Layer(Protocol):
    def decode(self, data: bytes) -> Iterator[bytes]: ...
    def flush(self) -> Iterator[bytes]: ...


class BoundedDecoder:
    """One gzip or deflate layer that yields output in bounded pieces."""

    def __init__(self, coding: str, step: int) -> None:
        self._coding = coding
        self._step = step
        # gzip: header and trailer checked; deflate: zlib-wrapped, with a raw-deflate fallback
        # because servers disagree about what "deflate" means.
        self._inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS)
        self._first = True
        self._fed = False

    def decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in pieces of at most ``step`` bytes."""
        self._fed = self._fed or bool(data)
        try:
            while data:
                try:
                    out = self._inflater.decompress(data, self._step)
                except zlib.error:
                    if not (self._first and self._coding == "deflate"):
                        raise
                    self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._first = False
                    continue
                self._first = False
                data = self._inflater.unconsumed_tail
                if self._inflater.eof and self._inflater.unused_data and self._coding == "gzip":
                    # Concatenated gzip members (allowed by RFC 1952): start the next one.
                    data = self._inflater.unused_data + data
                    self._inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
                if out:
                    yield out
        except zlib.error as exc:
            raise httpx.DecodingError(f"cannot decode {self._coding} body: {exc}") from None

    def flush(self) -> Iterator[bytes]:
        """Whatever the decoder still holds at the end of the body; an unfinished stream is an error."""
        try:
            while True:
                out = self._inflater.decompress(b"", self._step) if not self._inflater.eof else b""
                if not out:
                    break
                yield out
        except zlib.error as exc:
            raise httpx.DecodingError(f"cannot decode {self._coding} body: {exc}") from None
        if self._fed and not self._inflater.eof:
            # The server stopped before the end of the compressed stream: a truncated body.
            raise httpx.DecodingError(f"{self._coding} body ends before its compressed stream does")


class _BrotliLayer:
    """One br layer: brotli's own output limit bounds each piece."""

    def __init__(self, step: int) -> None:
        import brotli  # here: only a br response pays for the import

        self._error: type[Exception] = brotli.error
        self._decompressor: Any = brotli.Decompressor()
        self._step = step
        self._fed = False

    def decode(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._fed = True
        decompressor = self._decompressor
        try:
            if decompressor.is_finished():
                raise httpx.DecodingError("cannot decode br body: data after the end of the stream")
            out = decompressor.process(data, output_buffer_limit=self._step)
            while True:
                yield from _pieces(out, self._step)
                if decompressor.can_accept_more_data():
                    return  # output still held inside comes out with the next input, or at flush
                # More output is pending for input already given: take it a step at a time.
                out = decompressor.process(b"", output_buffer_limit=self._step)
        except self._error as exc:
            raise httpx.DecodingError(f"cannot decode br body: {exc or 'corrupt data'}") from None

    def flush(self) -> Iterator[bytes]:
        decompressor = self._decompressor
        if not self._fed:
            return
        try:
            while not decompressor.is_finished():
                out = decompressor.process(b"", output_buffer_limit=self._step)
                if not out:
                    raise httpx.DecodingError("br body ends before its compressed stream does")
                yield from _pieces(out, self._step)
        except self._error as exc:
            raise httpx.DecodingError(f"cannot decode br body: {exc or 'corrupt data'}") from None


def _pieces(data: bytes, step: int) -> Iterator[bytes]:
    """``data`` in pieces of at most ``step`` bytes (brotli's limit lets a buffer overshoot it)."""
    if len(data) <= step:
        if data:
            yield data
        return
    for start in range(0, len(data), step):
        yield data[start : start + step]


class _ZstdLayer:
    """One zstd layer: ``max_length`` bounds each piece; concatenated frames are all decoded."""

    def __init__(self, step: int) -> None:
        if sys.version_info >= (3, 14):
            from compression import zstd
        else:
            from backports import zstd
        self._zstd: Any = zstd
        self._step = step
        self._decompressor = self._new()
        self._fed = False
        self._started = False  # the current frame has had input

    def _new(self) -> Any:
        zstd = self._zstd
        return zstd.ZstdDecompressor(options={zstd.DecompressionParameter.window_log_max: _ZSTD_WINDOW_LOG_MAX})

    def decode(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._fed = True
        try:
            yield from self._run(data)
        except self._zstd.ZstdError as exc:
            raise httpx.DecodingError(f"cannot decode zstd body: {exc}") from None

    def _run(self, data: bytes) -> Iterator[bytes]:
        while True:
            decompressor = self._decompressor
            if decompressor.eof:
                data = decompressor.unused_data + data
                if not data:
                    return
                decompressor = self._decompressor = self._new()  # the next frame
                self._started = False
            self._started = self._started or bool(data)
            out = decompressor.decompress(data, self._step)
            data = b""
            if out:
                yield out
            if decompressor.needs_input and not decompressor.eof:
                return

    def flush(self) -> Iterator[bytes]:
        try:
            if not self._decompressor.eof and self._started:
                yield from self._run(b"")
        except self._zstd.ZstdError as exc:
            raise httpx.DecodingError(f"cannot decode zstd body: {exc}") from None
        if self._fed and self._started and not self._decompressor.eof:
            raise httpx.DecodingError("zstd body ends before its compressed stream does")


def _layer(coding: str, step: int) -> _Layer:
    if coding == "br":
        return _BrotliLayer(step)
    if coding == "zstd":
        return _ZstdLayer(step)
    return BoundedDecoder(coding, step)


class Decoder:
    """The response's ``Content-Encoding`` layers undone from the last; see the module docstring."""

    def __init__(self, content_encoding: str | None, *, step: int = 64 * 1024) -> None:
        if not content_encoding:  # most responses: nothing to parse
            self._layers: list[_Layer] = []
            self.undecoded: str | None = None
            return
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        known: list[str] = []
        while codings and codings[-1] in _ALIASES:
            known.append(_ALIASES[codings.pop()])
        # Applied in the order listed: undone from the last, down to the first we cannot undo.
        self._layers = [_layer(c, step) for c in known]
        self.undecoded = ", ".join(codings) or None

    @property
    def identity(self) -> bool:
        """Nothing to undo: the body is recorded as received."""
        return not self._layers

    def decode(self, data: bytes) -> Iterator[bytes]:
        yield from self._through(0, data)

    def flush(self) -> Iterator[bytes]:
        for depth, layer in enumerate(self._layers):
            for piece in layer.flush():
                yield from self._through(depth + 1, piece)

    def _through(self, depth: int, data: bytes) -> Iterator[bytes]:
        if depth == len(self._layers):
            yield data
            return
        for piece in self._layers[depth].decode(data):
            yield from self._through(depth + 1, piece)
