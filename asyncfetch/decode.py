"""Content-decoding with a bound on every step, so a compression bomb never balloons memory.

httpx's decoders inflate a whole network chunk at once (64 KB of gzip can become 64 MB);
these hand back at most ``step`` bytes per call to :meth:`BoundedDecoder.decode`, and the
caller counts them against ``--max-size`` as they come.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import httpx

# What we send in Accept-Encoding is what we can decode here.
ACCEPT_ENCODING = b"gzip, deflate"


_KNOWN = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class BoundedDecoder:
    """One content-coding layer (gzip or deflate) that yields output in bounded pieces."""

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


class Decoder:
    """The response's ``Content-Encoding`` layers undone in order; unknown codings pass through."""

    def __init__(self, content_encoding: str | None, *, step: int = 64 * 1024) -> None:
        codings = [_KNOWN.get(c.strip().lower()) for c in (content_encoding or "").split(",")]
        # Applied in the order listed, so undone from the last.
        self._layers = [BoundedDecoder(c, step) for c in reversed(codings) if c is not None]

    @property
    def identity(self) -> bool:
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
