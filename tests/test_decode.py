"""Content-decoding: gzip and deflate undone in bounded steps, and decoded bodies in records."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import zlib

import httpx
import pytest

from asyncfetch.decode import ACCEPT_ENCODING, Decoder
from tests.conftest import collect
from tests.server import TestServer

pytestmark = pytest.mark.anyio

_TEXT = b"The quick brown fox jumps over the lazy dog. " * 200


def _decode_all(decoder: Decoder, chunks: list[bytes]) -> bytes:
    out = [piece for chunk in chunks for piece in decoder.decode(chunk)]
    out.extend(decoder.flush())
    return b"".join(out)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(_TEXT)),
        ("x-gzip", gzip.compress(_TEXT)),
        ("GZIP", gzip.compress(_TEXT)),
        ("deflate", zlib.compress(_TEXT)),
        ("deflate", _raw_deflate(_TEXT)),
    ],
)
def test_gzip_and_deflate_bodies_are_decoded(coding: str, encoded: bytes) -> None:
    """gzip (and x-gzip), zlib-wrapped deflate and raw deflate all decode to the original bytes."""
    assert _decode_all(Decoder(coding), [encoded]) == _TEXT


def test_decoding_does_not_depend_on_how_the_body_is_split() -> None:
    """Feeding the coded body one byte at a time gives the same bytes as feeding it whole."""
    encoded = gzip.compress(_TEXT)
    assert _decode_all(Decoder("gzip"), [encoded[i : i + 1] for i in range(len(encoded))]) == _TEXT
    deflated = _raw_deflate(_TEXT)
    assert _decode_all(Decoder("deflate"), [deflated[i : i + 7] for i in range(0, len(deflated), 7)]) == _TEXT


def test_stacked_codings_are_undone_last_first() -> None:
    """``Content-Encoding: deflate, gzip`` (deflate applied first) is undone gzip first, then deflate."""
    encoded = gzip.compress(zlib.compress(_TEXT))
    assert _decode_all(Decoder("deflate, gzip"), [encoded]) == _TEXT


def test_concatenated_gzip_members_are_all_decoded() -> None:
    """A gzip body of several members (RFC 1952) decodes to all of them, in order."""
    encoded = gzip.compress(b"first;") + gzip.compress(b"second")
    assert _decode_all(Decoder("gzip"), [encoded]) == b"first;second"


@pytest.mark.parametrize("coding", [None, "", "identity", "br", "zstd"])
def test_unknown_or_absent_codings_pass_through(coding: str | None) -> None:
    """Without a coding we can undo, the body passes through as it came."""
    decoder = Decoder(coding)
    assert decoder.identity
    assert _decode_all(decoder, [b"as ", b"is"]) == b"as is"


def test_pieces_are_never_larger_than_the_step() -> None:
    """Each decoded piece is at most ``step`` bytes, however much one input chunk inflates to."""
    pieces = list(Decoder("gzip", step=4096).decode(gzip.compress(bytes(1_000_000))))
    assert sum(len(piece) for piece in pieces) == 1_000_000
    assert max(len(piece) for piece in pieces) <= 4096


def test_a_bomb_is_inflated_only_as_far_as_it_is_read() -> None:
    """Taking the first pieces of a huge inflation does not inflate the rest."""
    bomb = gzip.compress(bytes(50_000_000), 9)
    decoder = Decoder("gzip", step=65536)
    first = list(itertools.islice(decoder.decode(bomb), 3))
    assert [len(piece) for piece in first] == [65536] * 3


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_corrupt_body_raises_a_decoding_error(coding: str) -> None:
    """Bytes that are not in the declared coding raise httpx.DecodingError (error kind protocol)."""
    with pytest.raises(httpx.DecodingError):
        _decode_all(Decoder(coding), [b"\x1f\x8b\x08\x00this is not compressed at all" * 3])


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [("gzip", gzip.compress(_TEXT)[:-8]), ("deflate", zlib.compress(_TEXT)[:-20])],
    ids=["gzip", "deflate"],
)
def test_a_coded_body_that_stops_before_its_end_is_a_decoding_error(coding: str, encoded: bytes) -> None:
    """A gzip or deflate stream cut short (no end of stream) is not a complete body: DecodingError."""
    with pytest.raises(httpx.DecodingError):
        _decode_all(Decoder(coding), [encoded])


def test_an_empty_coded_body_decodes_to_nothing() -> None:
    """A response declared gzip but with no body at all (HEAD, 204) decodes to an empty body without error."""
    assert _decode_all(Decoder("gzip"), []) == b""


def test_we_only_ask_for_what_we_can_decode() -> None:
    """Accept-Encoding names exactly the codings the decoder undoes."""
    offered = {coding.strip() for coding in ACCEPT_ENCODING.decode().split(",")}
    assert offered == {"gzip", "deflate"}
    for coding in offered:
        assert not Decoder(coding).identity


@pytest.mark.parametrize("route", ["gzip", "deflate"])
async def test_a_coded_response_is_measured_and_hashed_after_decoding(server: TestServer, route: str) -> None:
    """size and sha256 describe the decoded body, not the bytes on the wire."""
    [record] = await collect([server.url(f"/{route}/100000")], include_body=True)
    assert record.error is None
    assert record.size == 100_000
    assert record.sha256 == hashlib.sha256(bytes(100_000)).hexdigest()
    assert record.body is not None
    assert record.body_encoding == "base64"  # zero bytes are binary
