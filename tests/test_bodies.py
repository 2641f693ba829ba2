"""Bodies and headers in records: text in its charset, base64 for binary, headers lower-case and joined."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tests.conftest import collect
from tests.server import TestServer

pytestmark = pytest.mark.anyio


async def test_no_body_or_headers_fields_unless_asked(server: TestServer) -> None:
    """Without include_body/include_headers the record has neither field."""
    [record] = await collect([server.url("/text")])
    fields = json.loads(record.to_json())
    assert "body" not in fields
    assert "body_encoding" not in fields
    assert "headers" not in fields


async def test_a_utf8_text_body_is_included_as_text(server: TestServer) -> None:
    """With include_body a UTF-8 text body is the body field as text, without body_encoding."""
    [record] = await collect([server.url("/text?charset=utf-8")], include_body=True)
    fields = json.loads(record.to_json())
    assert fields["body"] == "héllo wörld\n"
    assert "body_encoding" not in fields
    assert fields["content_type"] == "text/plain; charset=utf-8"


async def test_the_declared_charset_is_honoured(server: TestServer) -> None:
    """A latin-1 body declared as such becomes the right text; size and digest are of the bytes received."""
    [record] = await collect([server.url("/text?charset=latin-1")], include_body=True)
    assert record.body == "héllo wörld\n"
    assert record.body_encoding is None
    raw = "héllo wörld\n".encode("latin-1")
    assert record.size == len(raw)
    assert record.sha256 == hashlib.sha256(raw).hexdigest()


async def test_a_binary_body_is_base64(server: TestServer) -> None:
    """A body that is not text is base64 with body_encoding "base64", decoding to the exact bytes."""
    [record] = await collect([server.url("/binary")], include_body=True)
    fields = json.loads(record.to_json())
    assert fields["body_encoding"] == "base64"
    assert base64.b64decode(fields["body"]) == b"\x00\xff\xfe\x01binary"


async def test_an_empty_body_is_an_empty_string(server: TestServer) -> None:
    """A response with an empty body has body "" (present, not base64) and size 0."""
    [record] = await collect([server.url("/bytes/0")], include_body=True)
    fields = json.loads(record.to_json())
    assert fields["body"] == ""
    assert "body_encoding" not in fields
    assert fields["size"] == 0
    assert fields["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_the_body_field_holds_the_decoded_body(server: TestServer) -> None:
    """include_body gives the content-decoded body (gzip of zero bytes: base64 of the zeros)."""
    [record] = await collect([server.url("/gzip/300")], include_body=True)
    assert record.body_encoding == "base64"
    assert record.body is not None
    assert base64.b64decode(record.body) == bytes(300)


async def test_response_headers_are_lower_case_and_repeats_are_joined(server: TestServer) -> None:
    """With include_headers, names are lower-case and a repeated header's values are joined with ", "."""
    [record] = await collect([server.url("/headers")], include_headers=True)
    fields = json.loads(record.to_json())
    headers = fields["headers"]
    assert all(name == name.lower() for name in headers)
    assert headers["x-twice"] == "one, two"
    assert headers["content-length"] == "2"
    assert headers["x-latin"] == "café"


async def test_headers_are_those_of_the_final_response(server: TestServer) -> None:
    """After redirects, the headers field describes the final response, not a hop."""
    [record] = await collect([server.url("/redirect/2")], include_headers=True)
    assert record.headers is not None
    assert "location" not in record.headers
    assert record.headers["content-length"] == str(len(b"arrived\n"))


async def test_a_json_echo_body_is_text(server: TestServer) -> None:
    """An application/json body without a charset is UTF-8 text."""
    [record] = await collect([server.url("/echo")], include_body=True)
    assert record.body_encoding is None
    assert record.body is not None
    assert json.loads(record.body)["method"] == "GET"
