"""Content-decoding: gzip, deflate, br and zstd undone in bounded steps, and decoded bodies in records."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import zlib
from urllib.parse import urlencode

import brotli
import httpx
import pytest
from backports import zstd

from asyncfetch.decode import ACCEPT_ENCODING, Decoder
from asyncfetch.errors import ErrorKind
from tests.conftest import collect
from tests.server import TestServer, _encode

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


@pytest.mark.parametrize("coding", [None, "", "identity", "compress", "x-made-up"])
def test_unknown_or_absent_codings_pass_through(coding: str | None) -> None:
    """Without a coding we can undo, the body passes through as it came."""
    decoder = Decoder(coding)
    assert decoder.identity
    assert _decode_all(decoder, [b"as ", b"is"]) == b"as is"


@pytest.mark.parametrize("coding", ["br", "zstd"])
def test_brotli_and_zstd_bodies_are_decoded_however_they_are_split(coding: str) -> None:
    """br and zstd decode to the original bytes, fed whole or a few bytes at a time."""
    encoded = _encode(coding, _TEXT)
    assert _decode_all(Decoder(coding), [encoded]) == _TEXT
    assert _decode_all(Decoder(coding.upper()), [encoded[i : i + 3] for i in range(0, len(encoded), 3)]) == _TEXT


def test_concatenated_zstd_frames_are_all_decoded() -> None:
    """A zstd body of several frames decodes to all of them, in order."""
    assert _decode_all(Decoder("zstd"), [zstd.compress(b"first;") + zstd.compress(b"second")]) == b"first;second"


@pytest.mark.parametrize(
    "codings",
    ["gzip, br", "br, gzip", "deflate, zstd", "zstd, br, gzip", "gzip,deflate,br,zstd", "identity, br"],
)
def test_every_coding_of_a_list_is_undone_from_the_last(codings: str) -> None:
    """``Content-Encoding: gzip, br`` (br applied last) is undone br first, then gzip; any list, any length."""
    data = _TEXT
    for coding in codings.split(","):
        data = _encode(coding.strip(), data)
    decoder = Decoder(codings)
    assert decoder.undecoded is None
    assert _decode_all(decoder, [data]) == _TEXT


@pytest.mark.parametrize(
    ("codings", "left"),
    [
        ("compress", "compress"),
        ("x-made-up, gzip", "x-made-up"),
        ("gzip, x-made-up", "gzip, x-made-up"),
        ("br, compress, zstd", "br, compress"),
    ],
)
def test_decoding_stops_at_a_coding_it_cannot_undo(codings: str, left: str) -> None:
    """The codings after the last unknown one are undone; it and those before it stay, and are named."""
    data = _TEXT
    for coding in codings.split(","):
        data = _encode(coding.strip(), data)
    # What comes out is the body in exactly the codings left: no layer beneath them guessed at.
    expected = _TEXT
    for coding in left.split(","):
        expected = _encode(coding.strip(), expected)
    decoder = Decoder(codings)
    assert decoder.undecoded == left
    assert _decode_all(decoder, [data]) == expected


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_pieces_are_never_larger_than_the_step(coding: str) -> None:
    """Each decoded piece is at most ``step`` bytes, however much one input chunk inflates to."""
    decoder = Decoder(coding, step=4096)
    pieces = [*decoder.decode(_encode(coding, bytes(1_000_000))), *decoder.flush()]
    assert sum(len(piece) for piece in pieces) == 1_000_000
    assert max(len(piece) for piece in pieces) <= 4096


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_bomb_is_inflated_only_as_far_as_it_is_read(coding: str) -> None:
    """Taking the first pieces of a huge inflation does not inflate the rest."""
    bomb = _encode(coding, bytes(50_000_000))
    decoder = Decoder(coding, step=65536)
    first = list(itertools.islice(decoder.decode(bomb), 3))
    assert len(first) == 3
    assert all(0 < len(piece) <= 65536 for piece in first)


def test_a_zstd_window_beyond_the_http_limit_is_refused() -> None:
    """A zstd frame asking for more than RFC 9659's 8 MiB window is a decoding error, not a 2 GiB allocation."""
    # No content size in the frame: the decoder must then believe the 128 MiB window it declares.
    options: dict[int, int] = {zstd.CompressionParameter.window_log: 27, zstd.CompressionParameter.content_size_flag: 0}
    compressor = zstd.ZstdCompressor(options=options)
    wide = compressor.compress(bytes(1000)) + compressor.flush()
    with pytest.raises(httpx.DecodingError):
        _decode_all(Decoder("zstd"), [wide])


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_a_corrupt_body_raises_a_decoding_error(coding: str) -> None:
    """Bytes that are not in the declared coding raise httpx.DecodingError (error kind protocol)."""
    with pytest.raises(httpx.DecodingError):
        _decode_all(Decoder(coding), [b"\x1f\x8b\x08\x00this is not compressed at all" * 3])


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(_TEXT)[:-8]),
        ("deflate", zlib.compress(_TEXT)[:-20]),
        ("br", brotli.compress(_TEXT)[:-4]),
        ("zstd", zstd.compress(_TEXT)[:-4]),
    ],
    ids=["gzip", "deflate", "br", "zstd"],
)
def test_a_coded_body_that_stops_before_its_end_is_a_decoding_error(coding: str, encoded: bytes) -> None:
    """A coded stream cut short (no end of stream) is not a complete body: DecodingError."""
    with pytest.raises(httpx.DecodingError):
        _decode_all(Decoder(coding), [encoded])


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_an_empty_coded_body_decodes_to_nothing(coding: str) -> None:
    """A response declared coded but with no body at all (HEAD, 204) decodes to an empty body without error."""
    assert _decode_all(Decoder(coding), []) == b""


def test_we_only_ask_for_what_we_can_decode() -> None:
    """Accept-Encoding names exactly the codings the decoder undoes."""
    offered = {coding.strip() for coding in ACCEPT_ENCODING.decode().split(",")}
    assert offered == {"gzip", "deflate", "br", "zstd"}
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


async def test_the_default_accept_encoding_names_every_coding_we_decode(server: TestServer) -> None:
    """A request without an Accept-Encoding of its own offers gzip, deflate, br and zstd."""
    [record] = await collect([server.url("/echo")], include_body=True)
    assert record.body is not None
    offered = json.loads(record.body)["headers"]["accept-encoding"]
    assert {coding.strip() for coding in offered.split(",")} == {"gzip", "deflate", "br", "zstd"}


@pytest.mark.parametrize("codings", ["br", "zstd", "gzip, br", "br,zstd,gzip"])
async def test_brotli_zstd_and_stacked_responses_are_measured_after_decoding(server: TestServer, codings: str) -> None:
    """size and sha256 describe the decoded body for br, zstd and any list of codings; no note is added."""
    [record] = await collect([server.url("/coded/100000?" + urlencode({"codings": codings}))])
    assert record.error is None
    assert (record.size, record.sha256) == (100_000, hashlib.sha256(bytes(100_000)).hexdigest())
    assert "content_encoding" not in record.to_dict()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_max_size_holds_for_every_coding(server: TestServer, coding: str) -> None:
    """A bomb of any coding stops as too_large soon after max_size, without being inflated whole."""
    [record] = await collect([server.url(f"/coded/50000000?codings={coding}")], max_size=100_000, timeout=30)
    assert record.error is not None
    assert record.error.kind is ErrorKind.TOO_LARGE
    assert record.size <= 100_000 + 65536


@pytest.mark.parametrize(("codings", "left"), [("compress", "compress"), ("gzip, x-made-up", "gzip, x-made-up")])
async def test_an_unknown_coding_passes_through_with_a_note(server: TestServer, codings: str, left: str) -> None:
    """A body in a coding we cannot undo is recorded as received, not an error; content_encoding names the codings."""
    query = urlencode({"codings": codings, "data": "plain text"})
    [record] = await collect([server.url(f"/coded/0?{query}")], include_body=True)
    assert record.error is None
    assert record.ok
    received = _encode("gzip", b"plain text") if codings.startswith("gzip") else b"plain text"
    assert (record.size, record.sha256) == (len(received), hashlib.sha256(received).hexdigest())
    assert record.content_encoding == left
    assert record.to_dict()["content_encoding"] == left
