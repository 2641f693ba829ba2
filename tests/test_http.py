"""The HTTP vocabulary: origins, header rules, and the module staying a leaf."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

import asyncfetch.http
from asyncfetch.http import Origin, check_header, is_token, origin_of, wire_headers


def test_the_vocabulary_imports_nothing_of_asyncfetch() -> None:
    """http.py is a leaf: the transport and the input parser both import it, it imports neither."""
    tree = ast.parse(Path(asyncfetch.http.__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.split(".")[0] == "asyncfetch"]


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://Example.COM/x", Origin("http", "example.com", 80)),
        ("https://example.com/", Origin("https", "example.com", 443)),
        ("https://example.com:8443/", Origin("https", "example.com", 8443)),
        ("http://[::1]:81/", Origin("http", "::1", 81)),
    ],
)
def test_origin_is_scheme_lowercased_host_and_port_defaulted(url: str, origin: Origin) -> None:
    """An origin names the port even when the URL leaves it to the scheme."""
    assert origin_of(httpx.URL(url)) == origin


def test_header_names_must_be_tokens_and_values_single_line() -> None:
    """A header that would split the message or is not a token is refused with its name."""
    assert is_token("X-Trace_id.1")
    assert not is_token("bad name")
    check_header("X-Ok", "a value")
    with pytest.raises(ValueError, match="invalid header name 'bad:name'"):
        check_header("bad:name", "x")
    with pytest.raises(ValueError, match="line break or NUL"):
        check_header("X-Evil", "a\r\nInjected: 1")


def test_wire_headers_add_host_and_framing_unless_given() -> None:
    """Host and Content-Length are added once; a given Host or Transfer-Encoding is kept as is."""
    url = httpx.URL("http://example.com:8080/")
    assert wire_headers(url, "GET", (), None) == ((b"Host", b"example.com:8080"),)
    assert wire_headers(url, "POST", (), None) == ((b"Host", b"example.com:8080"), (b"Content-Length", b"0"))
    assert wire_headers(url, "PUT", ((b"host", b"other"),), b"abc") == ((b"host", b"other"), (b"Content-Length", b"3"))
    chunked = ((b"Transfer-Encoding", b"chunked"),)
    assert wire_headers(url, "POST", chunked, b"abc") == ((b"Host", b"example.com:8080"), *chunked)
