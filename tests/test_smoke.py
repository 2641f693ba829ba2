"""First end-to-end checks against the local server (fuller suites live beside this one)."""

from __future__ import annotations

import pytest

from tests.conftest import collect, records_of, run_cli
from tests.server import TestServer

pytestmark = pytest.mark.anyio


async def test_a_url_line_becomes_one_ok_record(server: TestServer) -> None:
    """A plain URL line is fetched and yields one record with status, size and digest."""
    [record] = await collect([server.url("/ok")])
    assert record.status == 200
    assert record.ok
    assert record.size == 3
    assert record.sha256 == "dc51b8c96c2d745df3bd5590d990230a482fd247123599548e0632fdbf97fc22"
    assert record.error is None


def test_cli_writes_one_json_line_per_request(server: TestServer) -> None:
    """The command reads stdin and writes exactly one JSON line per request to stdout."""
    lines = "\n".join([server.url("/ok"), "# a comment", "", server.url("/status/404")]) + "\n"
    result = run_cli("-q", input=lines)
    assert result.returncode == 0, result.stderr
    records = records_of(result.stdout)
    assert sorted(r["status"] for r in records) == [200, 404]
