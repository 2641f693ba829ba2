"""Input parsing: URL lines and JSON request objects become requests, or invalid records, and what is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncfetch.errors import ErrorKind
from asyncfetch.options import DEFAULT_USER_AGENT, FetchOptions
from asyncfetch.record import NO_ID
from asyncfetch.spec import InvalidRequest, SpecBuilder, _simple_url, parse_url, with_default_scheme
from tests.conftest import collect, records_of, run_cli
from tests.server import TestServer

pytestmark = pytest.mark.anyio


def _builder(**options: Any) -> SpecBuilder:
    return SpecBuilder(FetchOptions(**options))


def _invalid_line(line: str, **options: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        _builder(**options).from_line(line, 0)
    return caught.value


async def _echoed(server: TestServer, item: str | dict[str, Any], **options: Any) -> dict[str, Any]:
    """What the server's /echo route received for one request."""
    [record] = await collect([item], include_body=True, retries=0, **options)
    assert record.error is None, record.error
    assert record.body is not None
    echoed: dict[str, Any] = json.loads(record.body)
    return echoed


# -- URL lines: schemes and validation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", "https://example.com"),
        ("example.com/a?b=c", "https://example.com/a?b=c"),
        ("localhost:8080/x", "https://localhost:8080/x"),
        ("127.0.0.1:8080", "https://127.0.0.1:8080"),
        ("//example.com/x", "https://example.com/x"),
        ("http://example.com", "http://example.com"),
        ("https://example.com:8443/", "https://example.com:8443/"),
        ("mailto:someone@example.com", "mailto:someone@example.com"),
    ],
)
def test_a_url_without_a_scheme_gets_https(text: str, expected: str) -> None:
    """A URL with no scheme (a host:port/path counts as none) gets https://; a real scheme is kept."""
    assert with_default_scheme(text) == expected


@pytest.mark.parametrize(
    "line",
    [
        "file:///etc/passwd",
        "ftp://example.com/file",
        "mailto:someone@example.com",
        "http://",
        "https:///path-only",
        "http://exa mple.com/",
        "not a url at all",
        "http://example.com:99999/",
        "http://example.com:0/",
        "http://example.com:port/",
        "http://[::1/",
        "[1, 2]",
    ],
)
def test_an_unfetchable_url_line_is_an_invalid_url(line: str) -> None:
    """Non-http(s) schemes, garbage, an empty host and a bad port make an invalid_url, not a request."""
    invalid = _invalid_line(line)
    assert invalid.failure.kind is ErrorKind.INVALID_URL
    assert invalid.failure.message


@pytest.mark.parametrize(
    "url", ["http://example.com", "https://example.com:8443/a/b?c=d#e", "http://127.0.0.1:1/", "http://[::1]:80/"]
)
def test_http_and_https_urls_parse(url: str) -> None:
    """Well-formed http and https URLs (IPv4, IPv6, ports, queries) are accepted as they are."""
    assert parse_url(url) == httpx.URL(url)


# URLs near the edges of the fast parse's simple shape (asyncfetch.spec._SIMPLE_URL).
_EDGE_URLS = [
    "http://127.0.0.1:18300/ok",
    "https://example.com",
    "https://example.com/",
    "https://example.com:443/p",
    "http://example.com:80",
    "http://example.com:8080/a/b?c=d&e=%20f",
    "http://x.org/?",
    "http://x.org?q=1",
    "http://h/a%20b%zz%?c=d|e^f[g]",
    "http://h/a/./b",
    "http://h/a/../b",
    "http://h/.well-known/x",
    "http://h/a/.",
    "http://Example.COM/Path",
    "HTTP://example.com/",
    "http://999.1.1.1/",
    "http://01.2.3.4/",
    "http://1.2.3.4./",
    "http://1.2.3/",
    "http://1.2.3.4.5/",
    "http://0.0.0.0/",
    "http://255.255.255.255/",
    "http://256.1.1.1/",
    "http://1.2.3.0004/",
    "http://1.2.3.00/",
    "http://h:080/",
    "http://h:65535/",
    "http://h:65536/",
    "http://user:pw@h/",
    "http://h/p#frag",
    "http://h/a b",
    "http://h/é",
    "http://bücher.example/",
    "http://h/{x}`y`",
    "http://h/?a{b}`c`",
    "http://under_score.example/~user/",
    "http://h/" + "a" * 70_000,
]


def _url_alphabet_walk(count: int) -> list[str]:
    import random

    chance = random.Random(9)
    hosts = ["a.test", "a.test", "127.0.0.1", "x-y.z.", "a_b.test", "300.1.1.1", "UP.test", "[::1]"]
    common = ["/", "/", "/", "a", "b", "Z", "0", "~", "-", "_", ".html", "&", "=", "%2F", "?", ";", "+", "!"]
    pieces = [*common, *common, ".", "..", "%", "?", "#", "{", "`", '"', "<", " ", "é", ":", "@", "\\"]
    urls = []
    for _ in range(count):
        port = chance.choice(["", "", ":8080", ":80", ":443", ":0", ":70000", ":"])
        path = "/" + "".join(chance.choice(pieces) for _ in range(chance.randrange(6)))
        urls.append(f"{chance.choice(['http', 'https'])}://{chance.choice(hosts)}{port}{path}")
    return urls


@pytest.mark.parametrize("url", _EDGE_URLS + _url_alphabet_walk(400))
def test_the_fast_url_parse_agrees_with_httpx(url: str) -> None:
    """parse_url's fast path builds exactly the URL httpx's own parse builds, or refuses what it refuses.

    It builds httpx.URL's parsed form itself: this pins that form too, for the pinned httpx.
    """
    try:
        expected = httpx.URL(url)
    except httpx.InvalidURL:
        expected = None
    fast = _simple_url(url)
    if fast is not None:
        assert expected is not None
        assert fast._uri_reference == expected._uri_reference
        assert (str(fast), fast.raw_path, fast.netloc, fast.port) == (
            str(expected),
            expected.raw_path,
            expected.netloc,
            expected.port,
        )


def _parsed(url: str) -> tuple[object, ...]:
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        return ("refused", str(exc))
    return ("parsed", parsed._uri_reference, str(parsed))


@pytest.mark.parametrize("url", _EDGE_URLS + _url_alphabet_walk(400))
def test_parse_url_says_the_same_with_and_without_its_fast_path(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks parse_url makes after httpx's parse (host, port) hold for the fast path too."""
    fast = _parsed(url)
    monkeypatch.setattr("asyncfetch.spec._simple_url", lambda text: None)
    assert fast == _parsed(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:18300/ok", "https://www.example.com/a/b.html?q=1&r=2", "http://h.test:8080/%7Euser/"]
)
def test_common_urls_take_the_fast_parse(url: str) -> None:
    """The usual shape of a listed URL is parsed without httpx's parser (its cost is per URL)."""
    assert _simple_url(url) is not None


def test_a_plain_line_becomes_a_get_with_the_default_headers() -> None:
    """A URL line is a GET with Host, User-Agent, Accept and Accept-Encoding, and no body."""
    spec = _builder().from_line("http://example.com/x", 7)
    assert spec.index == 7
    assert spec.url == "http://example.com/x"
    assert spec.method == "GET"
    assert spec.body is None
    assert spec.id is NO_ID
    names = {name.lower(): value for name, value in spec.headers}
    assert names[b"host"] == b"example.com"
    assert names[b"user-agent"] == DEFAULT_USER_AGENT.encode()
    assert b"content-length" not in names


# -- JSON request objects ---------------------------------------------------------------------------


def test_a_json_object_line_carries_method_headers_body_timeout_and_id() -> None:
    """Every documented key of a JSON request object reaches the request."""
    line = json.dumps(
        {
            "url": "example.com/submit",
            "method": "put",
            "headers": {"X-One": "1"},
            "body": "héllo",
            "timeout": 2.5,
            "id": {"job": 3},
        }
    )
    spec = _builder().from_line(line, 0)
    assert spec.url == "https://example.com/submit"
    assert spec.method == "PUT"
    assert (b"X-One", b"1") in spec.headers
    assert spec.body == "héllo".encode()
    assert (b"Content-Length", str(len("héllo".encode())).encode()) in spec.headers
    assert spec.timeout == 2.5
    assert spec.id == {"job": 3}


def test_a_json_payload_is_a_post_with_a_json_content_type() -> None:
    """``json`` sends the value as the body with content-type application/json, as a POST."""
    spec = _builder().from_line('{"url": "http://example.com/", "json": {"a": [1, 2]}}', 0)
    assert spec.method == "POST"
    assert spec.body is not None
    assert json.loads(spec.body) == {"a": [1, 2]}
    headers = {name.lower(): value for name, value in spec.headers}
    assert headers[b"content-type"] == b"application/json"


def test_a_json_line_with_a_body_and_no_method_is_a_post() -> None:
    """A JSON line with ``body`` and no ``method`` is a POST."""
    assert _builder().from_line('{"url": "http://example.com/", "body": "x"}', 0).method == "POST"


def test_a_json_lines_own_method_wins_over_the_option() -> None:
    """A JSON line's ``method`` wins over -X, which only sets the method of plain URL lines."""
    builder = _builder(method="DELETE")
    assert builder.from_line('{"url": "http://example.com/", "method": "PATCH"}', 0).method == "PATCH"
    assert builder.from_line("http://example.com/", 1).method == "DELETE"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"url": "http://example.com/", "color": "red"}', "color"),
        ('{"url": "http://example.com/", "data": "x"}', "data"),
        ("{not json", "JSON"),
        ('{"url": "http://example.com/"', "JSON"),
        ('{"method": "GET"}', "url"),
        ('{"url": 5}', "url"),
        ('{"url": "http://example.com/", "timeout": -1}', "timeout"),
        ('{"url": "http://example.com/", "timeout": "soon"}', "timeout"),
        ('{"url": "http://example.com/", "body": 5}', "body"),
        ('{"url": "http://example.com/", "headers": ["a"]}', "headers"),
        ('{"url": "http://example.com/", "headers": {"X": "a\\r\\nInjected: 1"}}', "line break"),
        ('{"url": "http://example.com/", "method": "GE T"}', "method"),
        ('{"url": "http://example.com/", "headers": {"Bad Name": "v"}}', "header name"),
        ('{"url": "http://example.com/", "headers": {"X": null}}', "string"),
        ('{"url": "http://example.com/", "body": "a", "json": 1}', "both"),
    ],
)
def test_a_broken_json_request_is_an_invalid_input(line: str, fragment: str) -> None:
    """Unknown keys, non-JSON ``{`` lines and ill-typed values make invalid_input, naming the problem."""
    invalid = _invalid_line(line)
    assert invalid.failure.kind is ErrorKind.INVALID_INPUT
    assert fragment.lower() in invalid.failure.message.lower()


def test_a_json_request_with_an_unfetchable_url_is_an_invalid_url() -> None:
    """A well-formed JSON object whose url cannot be fetched is invalid_url, with its id kept."""
    invalid = _invalid_line('{"url": "ftp://example.com/", "id": 9}')
    assert invalid.failure.kind is ErrorKind.INVALID_URL
    assert invalid.request_id == 9
    assert invalid.url == "ftp://example.com/"


# -- through fetch(): skipping, invalid records, indexes -------------------------------------------


async def test_blank_comment_crlf_and_bom_lines_are_skipped(server: TestServer) -> None:
    """Blank lines, # comments, CRLF endings and a byte-order mark produce no record of their own."""
    lines = [
        "\ufeff" + server.url("/ok") + "\r\n",
        "\r\n",
        "   \t  ",
        "# a comment",
        "   # an indented comment",
        "",
        "  " + server.url("/status/201") + "  \r\n",
    ]
    records = await collect(lines)
    assert sorted((r.index, r.url, r.status) for r in records) == [
        (0, server.url("/ok"), 200),
        (1, server.url("/status/201"), 201),
    ]


async def test_a_host_port_path_line_is_fetched_over_https(tls_server: TestServer) -> None:
    """``127.0.0.1:PORT/path`` is fetched as https://127.0.0.1:PORT/path."""
    [record] = await collect([f"127.0.0.1:{tls_server.port}/ok"], insecure=True)
    assert record.url == f"https://127.0.0.1:{tls_server.port}/ok"
    assert record.status == 200
    assert record.final_url == record.url


async def test_the_run_goes_on_after_invalid_lines_and_indexes_count_every_request(server: TestServer) -> None:
    """Invalid lines yield invalid records in place, later lines are still fetched, and index counts them all."""
    lines = [
        "# header comment",
        "file:///etc/passwd",
        server.url("/ok"),
        "",
        '{"url": "' + server.url("/ok") + '", "bogus": 1}',
        "{oops",
        {"url": server.url("/status/404"), "id": "dict"},
        server.url("/status/204"),
    ]
    records = sorted(await collect(lines), key=lambda r: r.index)
    assert [r.index for r in records] == [0, 1, 2, 3, 4, 5]
    kinds = [r.error.kind if r.error else None for r in records]
    assert kinds == [ErrorKind.INVALID_URL, None, ErrorKind.INVALID_INPUT, ErrorKind.INVALID_INPUT, None, None]
    assert [r.status for r in records] == [None, 200, None, None, 404, 204]
    assert records[0].url == "file:///etc/passwd"
    assert records[0].attempts == 0
    assert records[3].url == "{oops"


async def test_requests_read_counts_requests_not_comments(server: TestServer) -> None:
    """The run's requests_read counts every request, invalid ones included, and no blank or comment line."""
    import asyncfetch

    run = asyncfetch.fetch(["#c", "", server.url("/ok"), "ftp://x/", server.url("/ok")])
    records = [record async for record in run]
    assert len(records) == 3
    assert run.requests_read == 3


async def test_an_id_is_echoed_even_when_null_and_absent_without_the_key(server: TestServer) -> None:
    """``id`` comes back unchanged when the input had the key (null included), and is absent otherwise."""
    url = server.url("/ok")
    lines = [
        json.dumps({"url": url, "id": None}),
        json.dumps({"url": url, "id": [1, {"two": 2}]}),
        json.dumps({"url": url}),
        url,
        json.dumps({"url": url, "id": "bad", "nope": True}),
    ]
    records = sorted(await collect(lines), key=lambda r: r.index)
    dicts = [json.loads(r.to_json()) for r in records]
    assert "id" in dicts[0]
    assert dicts[0]["id"] is None
    assert dicts[1]["id"] == [1, {"two": 2}]
    assert "id" not in dicts[2]
    assert "id" not in dicts[3]
    assert dicts[4]["id"] == "bad"
    assert dicts[4]["error"]["kind"] == "invalid_input"


async def test_a_json_lines_timeout_overrides_the_default(server: TestServer) -> None:
    """A JSON line's ``timeout`` is that request's deadline, whatever the run's timeout."""
    line = json.dumps({"url": server.url("/stall-headers"), "timeout": 0.3})
    [record] = await collect([line], timeout=30, retries=0)
    assert record.error is not None
    assert record.error.kind is ErrorKind.TIMEOUT
    assert record.elapsed_ms < 5000


# -- what the server receives: -X, -d, -H, -A and JSON lines ---------------------------------------


async def test_a_plain_line_sends_a_get_with_the_default_user_agent(server: TestServer) -> None:
    """By default a URL line is a GET carrying User-Agent asyncfetch/VERSION and no body."""
    echoed = await _echoed(server, server.url("/echo"))
    assert echoed["method"] == "GET"
    assert echoed["headers"]["user-agent"] == DEFAULT_USER_AGENT
    assert echoed["headers"]["accept"] == "*/*"
    assert echoed["body"] == ""


async def test_data_makes_plain_lines_posts_with_that_body(server: TestServer) -> None:
    """-d gives URL lines a body and makes them POSTs unless -X says otherwise."""
    echoed = await _echoed(server, server.url("/echo"), data=b"a=1&b=2")
    assert echoed["method"] == "POST"
    assert echoed["body"] == "a=1&b=2"
    assert echoed["headers"]["content-length"] == "7"
    put = await _echoed(server, server.url("/echo"), data=b"x", method="PUT")
    assert put["method"] == "PUT"
    assert put["body"] == "x"


async def test_method_applies_to_plain_lines(server: TestServer) -> None:
    """-X sets the method of URL lines."""
    echoed = await _echoed(server, server.url("/echo"), method="OPTIONS")
    assert echoed["method"] == "OPTIONS"


async def test_headers_are_added_and_an_empty_value_removes_a_default(server: TestServer) -> None:
    """-H adds a header to every request, replaces a default of the same name, and an empty value removes it."""
    echoed = await _echoed(
        server, server.url("/echo"), headers=(("X-Trace", "abc"), ("accept", "text/html"), ("Accept-Encoding", ""))
    )
    received = echoed["headers"]
    assert received["x-trace"] == "abc"
    assert received["accept"] == "text/html"
    assert "accept-encoding" not in received


async def test_user_agent_option_sets_the_header(server: TestServer) -> None:
    """-A replaces the User-Agent header."""
    echoed = await _echoed(server, server.url("/echo"), user_agent="probe/2.0")
    assert echoed["headers"]["user-agent"] == "probe/2.0"


async def test_a_json_line_sends_its_own_method_headers_and_json_body(server: TestServer) -> None:
    """A JSON line's headers win over -H, and its ``json`` goes out as an application/json POST body."""
    item = json.dumps({"url": server.url("/echo"), "headers": {"X-Trace": "mine"}, "json": {"k": "v"}})
    echoed = await _echoed(server, item, headers=(("X-Trace", "global"),), method="PUT")
    assert echoed["method"] == "POST"
    assert echoed["headers"]["x-trace"] == "mine"
    assert echoed["headers"]["content-type"] == "application/json"
    assert json.loads(echoed["body"]) == {"k": "v"}


async def test_a_json_line_without_payload_is_a_get_whatever_data_says(server: TestServer) -> None:
    """-d is the body of plain URL lines only: a JSON line without body or json sends none."""
    echoed = await _echoed(server, json.dumps({"url": server.url("/echo")}), data=b"global")
    assert echoed["method"] == "GET"
    assert echoed["body"] == ""


def test_cli_empty_header_value_removes_a_default_header(server: TestServer) -> None:
    """On the command line, ``-H 'Accept:'`` removes the Accept header, curl-style."""
    result = run_cli("-q", "--body", "-H", "Accept:", "-H", "X-Cli: yes", input=server.url("/echo") + "\n")
    assert result.returncode == 0, result.stderr
    [record] = records_of(result.stdout)
    received = json.loads(record["body"])["headers"]
    assert "accept" not in received
    assert received["x-cli"] == "yes"


def test_cli_data_from_a_file_with_a_method(server: TestServer, tmp_path: Path) -> None:
    """``-d @FILE`` reads the body from FILE; ``-X`` and ``-A`` set the method and user agent."""
    payload = tmp_path / "payload.txt"
    payload.write_bytes(b"from a file\n")
    result = run_cli(
        "-q", "--body", "-X", "PATCH", "-A", "cli-agent", "-d", f"@{payload}", input=server.url("/echo") + "\n"
    )
    assert result.returncode == 0, result.stderr
    [record] = records_of(result.stdout)
    assert record["method"] == "PATCH"
    echoed = json.loads(record["body"])
    assert echoed["method"] == "PATCH"
    assert echoed["body"] == "from a file\n"
    assert echoed["headers"]["user-agent"] == "cli-agent"
