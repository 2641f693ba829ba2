"""The record: every contract field, with its type, and the JSON line it becomes."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import pytest

from asyncfetch.errors import ErrorKind, Failure
from asyncfetch.record import Record, Redirect, iso_utc
from tests.conftest import collect
from tests.server import TestServer

pytestmark = pytest.mark.anyio

# Contract fields always present, and the JSON types each may take.
_ALWAYS: dict[str, tuple[type, ...]] = {
    "url": (str,),
    "index": (int,),
    "method": (str,),
    "status": (int, type(None)),
    "ok": (bool,),
    "final_url": (str, type(None)),
    "redirects": (list,),
    "http_version": (str, type(None)),
    "remote_ip": (str, type(None)),
    "remote_port": (int, type(None)),
    "content_type": (str, type(None)),
    "size": (int,),
    "sha256": (str, type(None)),
    "elapsed_ms": (int, float),
    "attempts": (int,),
    "error": (dict, type(None)),
    "fetched_at": (str,),
}
_FETCHED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _as_json(record: Record) -> dict[str, Any]:
    line = record.to_json()
    assert "\n" not in line
    value: dict[str, Any] = json.loads(line)
    return value


def _check_types(fields: dict[str, Any]) -> None:
    for name, types in _ALWAYS.items():
        assert name in fields, name
        assert isinstance(fields[name], types), (name, fields[name])
        if int in types and float not in types:
            assert not isinstance(fields[name], bool), name


async def test_a_successful_record_has_every_field_with_its_type(server: TestServer) -> None:
    """A completed request's JSON has exactly the contract's always-present fields, each of its type."""
    [record] = await collect([server.url("/ok")])
    fields = _as_json(record)
    assert set(fields) == set(_ALWAYS)
    _check_types(fields)
    assert fields["url"] == server.url("/ok")
    assert fields["index"] == 0
    assert fields["method"] == "GET"
    assert fields["status"] == 200
    assert fields["ok"] is True
    assert fields["final_url"] == server.url("/ok")
    assert fields["redirects"] == []
    assert fields["http_version"] == "HTTP/1.1"
    assert fields["remote_ip"] == "127.0.0.1"
    assert fields["remote_port"] == server.port
    assert fields["content_type"] == "text/plain"
    assert fields["size"] == 3
    assert re.fullmatch(r"[0-9a-f]{64}", fields["sha256"])
    assert fields["attempts"] == 1
    assert fields["error"] is None


async def test_an_error_record_has_every_field_with_its_type(server: TestServer) -> None:
    """A failed request's JSON has the same fields: null status, no digest, and an error kind and message."""
    [record] = await collect([server.url("/close")], retries=0)
    fields = _as_json(record)
    assert set(fields) == set(_ALWAYS)
    _check_types(fields)
    assert fields["ok"] is False
    assert fields["status"] is None
    assert fields["final_url"] is None
    assert fields["sha256"] is None
    assert set(fields["error"]) == {"kind", "message"}
    assert fields["error"]["kind"] == "protocol"
    assert fields["error"]["message"]


async def test_an_invalid_line_record_has_every_field_with_its_type() -> None:
    """A line that is not a request still gives a full record, with zero attempts."""
    [record] = await collect(["ftp://example.com/x"])
    fields = _as_json(record)
    assert set(fields) == set(_ALWAYS)
    _check_types(fields)
    assert fields["error"]["kind"] == "invalid_url"
    assert fields["attempts"] == 0
    assert fields["ok"] is False


@pytest.mark.parametrize(("status", "ok"), [(200, True), (204, True), (304, True), (399, True), (404, False)])
async def test_ok_is_true_only_below_400_and_4xx_is_not_an_error(server: TestServer, status: int, ok: bool) -> None:
    """A status of 400 or more is ok false with error null; below 400 it is ok true."""
    [record] = await collect([server.url(f"/status/{status}")], follow=False, retries=0)
    fields = _as_json(record)
    assert fields["status"] == status
    assert fields["ok"] is ok
    assert fields["error"] is None


async def test_a_5xx_status_is_not_an_error_kind(server: TestServer) -> None:
    """A 500 is a response: ok false, error null, its body read and hashed."""
    [record] = await collect([server.url("/status/500")], retries=0)
    assert record.status == 500
    assert not record.ok
    assert record.error is None
    assert record.sha256 is not None


def test_ok_needs_a_status_below_400_and_no_error() -> None:
    """``ok`` is false without a status, with a status of 400 or more, or with any error."""
    base: dict[str, Any] = {"url": "http://x/", "index": 0, "method": "GET"}
    assert Record(**base, status=200).ok
    assert not Record(**base).ok
    assert not Record(**base, status=400).ok
    assert not Record(**base, status=200, error=Failure(ErrorKind.TOO_LARGE, "big")).ok


async def test_fetched_at_is_iso_utc_with_milliseconds_at_the_attempts_start(server: TestServer) -> None:
    """fetched_at is ISO 8601 UTC with milliseconds and a Z, taken when the attempt started."""
    before = time.time()
    [record] = await collect([server.url("/sleep/300")])
    after = time.time()
    assert _FETCHED_AT.fullmatch(record.fetched_at), record.fetched_at
    started = datetime.strptime(record.fetched_at, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    assert before - 0.001 <= started <= after
    assert started < after - 0.25  # the start of the attempt, not its end


def test_iso_utc_formats_milliseconds_and_never_rounds_up_to_a_new_second() -> None:
    """iso_utc writes exactly three digits of milliseconds, truncated."""
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_700_000_000.0409) == "2023-11-14T22:13:20.040Z"
    assert iso_utc(59.9999) == "1970-01-01T00:00:59.999Z"


def test_iso_utc_follows_the_clock_from_second_to_second() -> None:
    """The text of the last second is reused only within that second, whichever way the clock goes."""
    seen = [iso_utc(t) for t in (59.5, 59.25, 60.0, 60.75, 59.1, 3661.0025)]
    assert seen == [
        "1970-01-01T00:00:59.500Z",
        "1970-01-01T00:00:59.250Z",
        "1970-01-01T00:01:00.000Z",
        "1970-01-01T00:01:00.750Z",
        "1970-01-01T00:00:59.100Z",
        "1970-01-01T01:01:01.002Z",
    ]


async def test_elapsed_ms_is_the_wall_time_of_the_attempt(server: TestServer) -> None:
    """elapsed_ms covers request start to last body byte, in milliseconds."""
    [record] = await collect([server.url("/sleep/250")])
    assert isinstance(record.elapsed_ms, float)
    assert 240 <= record.elapsed_ms < 5000


async def test_attempts_is_one_without_retries(server: TestServer) -> None:
    """A request that succeeds at once records one attempt."""
    [record] = await collect([server.url("/ok")])
    assert record.attempts == 1


async def test_a_lone_surrogate_id_still_gives_valid_utf8_json(server: TestServer) -> None:
    """An id holding a lone surrogate is escaped, so the line is valid UTF-8 and round-trips through JSON."""
    line = '{"url": "' + server.url("/ok") + '", "id": "\\ud800 and \u00e9"}'
    [record] = await collect([line])
    raw = record.to_line()
    assert raw.endswith(b"\n")
    text = raw.decode("utf-8")  # strict: raises on anything that is not UTF-8
    assert json.loads(text)["id"] == "\ud800 and \u00e9"
    assert json.loads(record.to_json())["id"] == "\ud800 and \u00e9"


def test_non_ascii_text_is_written_as_utf8_not_escaped() -> None:
    """Ordinary non-ASCII text is written as UTF-8 characters."""
    record = Record(url="http://example.com/é", index=0, method="GET", id="日本")
    assert "日本" in record.to_json()
    assert record.to_line() == (record.to_json() + "\n").encode("utf-8")


def test_optional_fields_appear_only_when_set() -> None:
    """headers, body, body_encoding and saved_to are absent unless their option filled them."""
    plain = json.loads(Record(url="http://x/", index=0, method="GET").to_json())
    assert not {"headers", "body", "body_encoding", "saved_to", "id"} & set(plain)
    full = Record(
        url="http://x/",
        index=0,
        method="GET",
        headers={"a": "b"},
        body="AA==",
        body_encoding="base64",
        saved_to="/tmp/x",
        redirects=(Redirect(301, "http://y/"),),
    )
    fields = json.loads(full.to_json())
    assert fields["headers"] == {"a": "b"}
    assert fields["body"] == "AA=="
    assert fields["body_encoding"] == "base64"
    assert fields["saved_to"] == "/tmp/x"
    assert fields["redirects"] == [{"status": 301, "url": "http://y/"}]


def _strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, as RFC 8259 and most JSON parsers do."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_a_record_line_is_always_strict_json(value: str) -> None:
    """Whatever number an input id holds, the record line parses as strict JSON (no NaN or Infinity)."""
    [record] = await collect(['{"url": "ftp://example.com/", "id": ' + value + "}"])
    _strict_json(record.to_json())
