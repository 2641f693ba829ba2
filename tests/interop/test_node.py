"""node's http server: bodies delimited by close, chunked bodies with trailers, 1xx before the answer."""

from __future__ import annotations

import pytest

from tests.conftest import collect, records_of, run_cli
from tests.interop.conftest import WebServer

pytestmark = pytest.mark.anyio

SIZES = ["/empty.bin", "/1k.bin", "/100k.bin", "/10m.bin"]


@pytest.mark.parametrize("route", ["/close", "/connection-close", "/trailers", "/early-hints", "/processing"])
async def test_every_size_arrives_whole_whatever_the_framing(node_server: WebServer, route: str) -> None:
    """Close-delimited, Connection: close, chunked with trailers, after a 103 or a 102: each file as on disk."""
    tree = node_server.tree
    records = {r.url: r for r in await collect([node_server.base_url + route + path for path in SIZES], concurrency=2)}
    for path in SIZES:
        record = records[node_server.base_url + route + path]
        assert record.error is None, (path, record.error)
        assert (record.status, record.size, record.sha256, record.attempts) == (
            200,
            tree[path].size,
            tree[path].sha256,
            1,
        ), path


async def test_a_kept_alive_connection_stays_in_step_after_trailers(node_server: WebServer) -> None:
    """100 chunked-with-trailers answers in a row on one connection: the trailers never leak into the next answer."""
    file = node_server.tree["/100k.bin"]
    url = node_server.base_url + "/trailers" + file.path
    records = await collect([url] * 100, concurrency=1)
    assert {(r.status, r.size, r.sha256, r.attempts) for r in records} == {(200, file.size, file.sha256, 1)}


async def test_many_interim_responses_before_the_answer_are_skipped(node_server: WebServer) -> None:
    """Twenty 1xx responses (103 and 102) then the answer: the record is the 200 and its body, and the next
    request on the same connection is answered in step."""
    file = node_server.tree["/1k.bin"]
    url = node_server.base_url + "/informational/20" + file.path
    records = await collect([url] * 20, concurrency=1, include_headers=True)
    for record in records:
        assert (record.status, record.sha256, record.error) == (200, file.sha256, None)
        assert record.headers is not None
        assert "link" not in record.headers  # a 1xx's headers are not the answer's


def test_the_cli_reads_close_delimited_bodies(node_server: WebServer) -> None:
    """The asyncfetch command on close-delimited answers: one record per file, each as on disk, exit 0."""
    lines = "".join(node_server.base_url + "/close" + path + "\n" for path in SIZES)
    done = run_cli("-q", input=lines)
    assert done.returncode == 0, done.stderr.decode()
    records = {record["url"]: record for record in records_of(done.stdout)}
    for path in SIZES:
        record = records[node_server.base_url + "/close" + path]
        assert (record["status"], record["size"], record["sha256"]) == (
            200,
            node_server.tree[path].size,
            node_server.tree[path].sha256,
        )
