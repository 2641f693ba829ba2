"""The library: fetch() over any iterable, the transport seam (respx), stopping and closing early."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

import asyncfetch
from asyncfetch.errors import ErrorKind
from asyncfetch.transport import ConnectionPool
from tests.conftest import collect
from tests.server import TestServer

pytestmark = pytest.mark.anyio


def _other_tasks(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Tasks alive now that were not before (the test's own excluded)."""
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()]


async def _settle() -> None:
    """Let finalisers and cancellations run: collect cycles, then give the loop a few turns."""
    gc.collect()
    for _ in range(5):
        await asyncio.sleep(0.01)


# -- import and inputs -----------------------------------------------------------------------------


def _cli_modules_after(code: str) -> list[str]:
    """Names of typer, rich, click and asyncfetch.cli modules loaded after running ``code`` in a fresh interpreter."""
    probe = (
        code
        + "\nimport json, sys\n"
        + "print(json.dumps(sorted(m for m in sys.modules"
        + " if m.split('.')[0] in ('typer', 'rich', 'click') or m.split('.')[:2] == ['asyncfetch', 'cli'])))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    names: list[str] = json.loads(result.stdout)
    return names


def test_importing_the_package_loads_neither_typer_nor_rich() -> None:
    """``import asyncfetch`` loads no CLI library (nor the CLI package)."""
    assert _cli_modules_after("import asyncfetch") == []


def test_running_the_engine_loads_no_cli_library_of_its_own() -> None:
    """Using fetch() loads neither typer nor asyncfetch.cli, and no rich or click beyond what httpx itself imports."""
    used = _cli_modules_after(
        "import asyncio, asyncfetch\n"
        "async def main():\n"
        "    [r async for r in asyncfetch.fetch(['ftp://x/'])]\n"
        "asyncio.run(main())\n"
        "asyncfetch.Record, asyncfetch.FetchOptions, asyncfetch.ErrorKind\n"
    )
    assert not [name for name in used if name.split(".")[0] == "typer" or name.split(".")[:2] == ["asyncfetch", "cli"]]
    assert set(used) <= set(_cli_modules_after("import httpx"))


async def test_fetch_takes_a_sync_list_of_lines(server: TestServer) -> None:
    """A plain list of URL lines is fetched, one record per request."""
    records = await collect([server.url("/ok"), server.url("/status/201")])
    assert sorted(r.status or 0 for r in records) == [200, 201]


async def test_fetch_takes_a_lazy_generator(server: TestServer) -> None:
    """A generator is consumed as an iterable of lines."""

    def lines() -> Iterator[str]:
        for i in range(5):
            yield server.url(f"/status/{200 + i}")

    records = await collect(lines())
    assert sorted(r.status or 0 for r in records) == [200, 201, 202, 203, 204]


async def test_fetch_takes_an_async_generator(server: TestServer) -> None:
    """An async iterable of lines works like a list."""

    async def lines() -> AsyncIterator[str]:
        for i in range(3):
            await asyncio.sleep(0)
            yield server.url(f"/status/{200 + i}")

    records = [record async for record in asyncfetch.fetch(lines())]
    assert sorted(r.status or 0 for r in records) == [200, 201, 202]


async def test_fetch_takes_mappings_like_json_request_objects(server: TestServer) -> None:
    """A mapping is a request object: its url, method, body and id are used as a JSON line's would be."""
    items: list[Any] = [
        {"url": server.url("/echo"), "method": "PATCH", "body": "b", "id": ("tuple", 1)},
        {"url": server.url("/ok")},
        {"url": server.url("/ok"), "extra": 1},
    ]
    records = sorted(await collect(items, include_body=True), key=lambda r: r.index)
    assert records[0].method == "PATCH"
    assert records[0].body is not None
    assert json.loads(records[0].body)["body"] == "b"
    assert records[0].id == ("tuple", 1)
    assert json.loads(records[0].to_json())["id"] == ["tuple", 1]
    assert "id" not in json.loads(records[1].to_json())
    assert records[2].error is not None
    assert records[2].error.kind is ErrorKind.INVALID_INPUT


async def test_requests_start_before_the_input_is_fully_read(server: TestServer) -> None:
    """The input is read lazily: the first record arrives while the input is still waiting for more."""
    first_record_seen = asyncio.Event()

    async def lines() -> AsyncIterator[str]:
        yield server.url("/ok")
        await first_record_seen.wait()  # deadlocks if fetch reads all input before starting
        yield server.url("/ok")

    records = []
    async with asyncio.timeout(10):
        async for record in asyncfetch.fetch(lines()):
            records.append(record)
            first_record_seen.set()
    assert len(records) == 2


async def test_invalid_options_raise_at_once() -> None:
    """fetch() rejects invalid options with ValueError before anything runs."""
    with pytest.raises(ValueError, match="concurrency"):
        asyncfetch.fetch([], concurrency=0)
    with pytest.raises(TypeError):
        asyncfetch.fetch([], options=asyncfetch.FetchOptions(), timeout=1)


async def test_a_run_can_be_iterated_only_once(server: TestServer) -> None:
    """Iterating the same run twice is an error, not a silent second fetch."""
    run = asyncfetch.fetch([server.url("/ok")])
    assert len([r async for r in run]) == 1
    with pytest.raises(RuntimeError):
        run.__aiter__()


async def test_an_error_in_the_input_surfaces_from_the_iteration(server: TestServer) -> None:
    """An exception raised by the input iterable propagates to the caller instead of being swallowed."""

    async def lines() -> AsyncIterator[str]:
        yield server.url("/ok")
        raise LookupError("input broke")

    before = set(asyncio.all_tasks())
    with pytest.raises(LookupError, match="input broke"):
        [record async for record in asyncfetch.fetch(lines())]
    await _settle()
    assert _other_tasks(before) == []


async def test_a_transport_given_to_fetch_is_left_open(server: TestServer) -> None:
    """fetch() does not close a transport it did not create: the caller can use it again."""
    pool = ConnectionPool()
    try:
        [first] = await collect([server.url("/ok")], transport=pool)
        [second] = await collect([server.url("/ok")], transport=pool)
        assert first.status == second.status == 200
        assert pool.connections_opened == 1
    finally:
        await pool.aclose()


# -- the respx seam --------------------------------------------------------------------------------


async def test_a_respx_router_can_stand_in_for_the_network() -> None:
    """fetch(transport=httpx.MockTransport(router.async_handler)) answers from respx routes."""
    router = respx.MockRouter(assert_all_called=True)
    router.get("https://api.example.test/items").mock(
        return_value=httpx.Response(200, json={"items": [1, 2]}, headers={"X-Mock": "yes"})
    )
    router.post("https://api.example.test/items").mock(return_value=httpx.Response(201))
    items = ["api.example.test/items", {"url": "https://api.example.test/items", "json": {"n": 3}}]
    records = await collect(
        items, transport=httpx.MockTransport(router.async_handler), include_body=True, include_headers=True
    )
    by_method = {r.method: r for r in records}
    assert by_method["GET"].status == 200
    assert by_method["GET"].body == '{"items":[1,2]}'
    assert by_method["GET"].content_type == "application/json"
    assert by_method["GET"].headers is not None
    assert by_method["GET"].headers["x-mock"] == "yes"
    assert by_method["POST"].status == 201
    posted = router.calls.last.request
    assert json.loads(posted.content) == {"n": 3}
    router.assert_all_called()


async def test_a_respx_connect_error_becomes_a_connect_record_and_is_retried() -> None:
    """A route raising httpx.ConnectError gives a connect error record after retries+1 calls."""
    router = respx.MockRouter()
    route = router.get("https://down.example.test/").mock(side_effect=httpx.ConnectError)
    [record] = await collect(
        ["https://down.example.test/"], transport=httpx.MockTransport(router.async_handler), retries=2, max_retry_wait=0
    )
    assert record.error is not None
    assert record.error.kind is ErrorKind.CONNECT
    assert record.status is None
    assert record.attempts == 3
    assert route.call_count == 3


async def test_a_respx_redirect_chain_is_followed() -> None:
    """Redirects answered by a mock transport are followed like real ones."""
    router = respx.MockRouter()
    router.get("https://a.example.test/start").mock(
        return_value=httpx.Response(301, headers={"Location": "https://b.example.test/end"})
    )
    router.get("https://b.example.test/end").mock(return_value=httpx.Response(200, text="done"))
    [record] = await collect(["https://a.example.test/start"], transport=httpx.MockTransport(router.async_handler))
    assert record.status == 200
    assert record.final_url == "https://b.example.test/end"
    assert [(hop.status, hop.url) for hop in record.redirects] == [(301, "https://a.example.test/start")]


# -- stopping and closing early ----------------------------------------------------------------------


async def test_setting_stop_ends_the_iteration_with_only_complete_records(server: TestServer) -> None:
    """Once stop is set, no new request starts, running ones are abandoned, and iteration ends."""

    async def endless() -> AsyncIterator[str]:
        i = 0
        while True:
            yield server.url(f"/sleep/{50 if i % 2 else 3000}")
            i += 1

    stop = asyncio.Event()
    before = set(asyncio.all_tasks())
    records = []
    started = time.monotonic()
    async with asyncio.timeout(10):
        async for record in asyncfetch.fetch(endless(), concurrency=8, stop=stop):
            records.append(record)
            if len(records) == 3:
                stop.set()
    assert time.monotonic() - started < 3  # the 3 s sleepers were abandoned, not awaited
    assert len(records) >= 3
    assert all(r.error is None and r.status == 200 for r in records)
    await _settle()
    assert _other_tasks(before) == []


async def test_a_stop_set_before_the_run_yields_nothing(server: TestServer) -> None:
    """A run whose stop is already set starts no request."""
    stop = asyncio.Event()
    stop.set()
    records = [r async for r in asyncfetch.fetch([server.url("/ok")] * 5, stop=stop)]
    assert records == []


async def test_breaking_out_of_a_closed_run_leaves_no_tasks(server: TestServer) -> None:
    """Leaving ``async with fetch(...)`` early cancels the engine: no task or connection is left behind."""
    before = set(asyncio.all_tasks())
    async with asyncfetch.fetch([server.url("/ok")] + [server.url("/sleep/3000")] * 10, concurrency=11) as run:
        async for record in run:
            assert record.status == 200
            break
    await _settle()
    assert _other_tasks(before) == []


async def test_breaking_out_without_closing_stops_the_engine_at_once(server: TestServer) -> None:
    """A bare ``break`` out of ``async for ... in fetch(...)`` stops the engine as soon as the run is dropped."""
    before = set(asyncio.all_tasks())
    gc.disable()  # prove cleanup does not wait for the cycle collector
    try:
        async for record in asyncfetch.fetch([server.url("/ok")] + [server.url("/sleep/3000")] * 10, concurrency=11):
            assert record.status == 200
            break
        for _ in range(5):
            await asyncio.sleep(0.01)
        left = _other_tasks(before)
    finally:
        gc.enable()
        await _settle()  # whatever the outcome, leave nothing running for the next test
    assert left == []


async def test_breaking_out_without_closing_is_cleaned_up_by_the_collector(server: TestServer) -> None:
    """Even without closing, a dropped run's engine is cancelled once the run is garbage-collected."""
    before = set(asyncio.all_tasks())
    async for record in asyncfetch.fetch([server.url("/ok")] + [server.url("/sleep/3000")] * 10, concurrency=11):
        assert record.status == 200
        break
    await _settle()
    assert _other_tasks(before) == []


@pytest.mark.parametrize(
    "raw",
    [
        [(b"Content-Type", b"text/html"), (b"ETag", b'"v1"'), (b"X-Other", b"1")],
        [(b"content-encoding", b"gzip"), (b"Content-Encoding", b"br"), (b"Retry-After", b"5")],
        [(b"Location", "/caf\u00e9".encode()), (b"Last-Modified", b"Tue, 01 Dec 2026 00:00:00 GMT")],
        [(b"Location", "/caf\u00e9".encode("latin-1")), (b"Content-Type", b"text/plain")],
        [(b"X-Name", "\u00e9".encode()), (b"Content-Type", "text/plain; name=\u00e9".encode())],
    ],
)
def test_the_response_fields_read_as_httpx_decodes_them(raw: list[tuple[bytes, bytes]]) -> None:
    """The worker's one pass over the raw headers finds what a lookup by name finds, decoded the same."""
    from asyncfetch.worker import _ResponseFields

    headers = httpx.Headers(raw)
    fields = _ResponseFields(headers)
    encodings = headers.get_list("content-encoding")
    assert fields.content_type == headers.get("content-type")
    assert fields.etag == headers.get("etag")
    assert fields.last_modified == headers.get("last-modified")
    assert fields.location == headers.get("location")
    assert fields.retry_after == headers.get("retry-after")
    assert fields.content_encoding == (", ".join(encodings) if encodings else None)
