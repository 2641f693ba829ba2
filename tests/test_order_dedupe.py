"""--ordered (records in input order, bounded reorder buffer) and --dedupe (each distinct URL once, bounded memory)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import asyncfetch
from asyncfetch.dedupe import SeenSet
from tests.conftest import records_of, run_cli
from tests.server import TestServer

pytestmark = pytest.mark.anyio


async def fetch_all(urls: list[str], **options: Any) -> list[asyncfetch.Record]:
    return [record async for record in asyncfetch.fetch(urls, **options)]


# -- --ordered ---------------------------------------------------------------------------------------
async def test_ordered_records_follow_input_order_when_later_requests_finish_first(fresh_server: TestServer) -> None:
    """With ordered=True, records come in input order though the requests ran together and finished in reverse."""
    urls = [fresh_server.url(f"/sleep/{ms}") for ms in (300, 200, 100)] + [
        fresh_server.url(f"/ok?n={i}") for i in range(5)
    ]
    records = await fetch_all(urls, concurrency=8, ordered=True)
    assert [record.index for record in records] == list(range(8))
    assert [record.url for record in records] == urls
    assert fresh_server.stats.max_in_flight >= 3  # they really ran side by side


def test_ordered_cli_keeps_input_order_with_comments_and_invalid_lines(fresh_server: TestServer) -> None:
    """--ordered writes one record per request in input order, invalid lines in their place, comments skipped."""
    lines = [
        fresh_server.url("/sleep/200"),
        "# a comment",
        "ftp://example.invalid/file",
        "",
        fresh_server.url("/sleep/50"),
        "{not json",
        fresh_server.url("/ok"),
    ]
    result = run_cli("-q", "--ordered", "-c", "5", input="\n".join(lines) + "\n")
    records = records_of(result.stdout)
    assert [record["index"] for record in records] == [0, 1, 2, 3, 4]
    assert [record["status"] for record in records] == [200, None, 200, None, 200]
    assert records[1]["error"]["kind"] == "invalid_url"
    assert records[3]["error"]["kind"] == "invalid_input"


# The engine's reorder window is max(2 x concurrency, 64) requests; the bound checked here is
# twice that, so tuning the window stays free while an unbounded buffer (fetching everything
# behind one slow request) fails.
ORDERED_CONCURRENCY = 4
REORDER_BOUND = 2 * max(2 * ORDERED_CONCURRENCY, 64)


async def test_ordered_reads_only_a_bounded_window_past_a_slow_request(fresh_server: TestServer) -> None:
    """With ordered=True, while the first request is outstanding only a window of later ones is fetched."""
    urls = [fresh_server.url("/sleep/1000")] + [fresh_server.url(f"/ok?n={i}") for i in range(600)]
    records = await fetch_all(urls, concurrency=ORDERED_CONCURRENCY, ordered=True)
    assert [record.index for record in records] == list(range(601))
    slow_started = min(seen.started for seen in fresh_server.stats.requests if seen.path.startswith("/sleep/"))
    while_slow = sum(
        1 for seen in fresh_server.stats.requests if seen.path.startswith("/ok") and seen.started < slow_started + 1.0
    )
    assert 0 < while_slow <= REORDER_BOUND, while_slow


# -- --dedupe ----------------------------------------------------------------------------------------
async def test_dedupe_fetches_each_distinct_url_once_and_indexes_count_duplicates(fresh_server: TestServer) -> None:
    """With dedupe=True, each distinct URL is requested once, only first occurrences get records, at their own index."""
    a, b, c = (fresh_server.url(f"/ok?k={key}") for key in "abc")
    records = await fetch_all([a, b, a, c, b, a], dedupe=True, concurrency=4)
    assert sorted((record.index, record.url) for record in records) == [(0, a), (1, b), (3, c)]
    assert sorted(fresh_server.stats.paths()) == ["/ok?k=a", "/ok?k=b", "/ok?k=c"]


async def test_without_dedupe_every_duplicate_is_fetched(fresh_server: TestServer) -> None:
    """Without dedupe, a URL listed three times is fetched three times, with three records."""
    url = fresh_server.url("/ok?k=same")
    records = await fetch_all([url] * 3, concurrency=3)
    assert sorted(record.index for record in records) == [0, 1, 2]
    assert fresh_server.hits("/ok?k=same") == 3


async def test_dedupe_compares_whole_urls(fresh_server: TestServer) -> None:
    """URLs that differ only in their query are distinct: each is fetched."""
    urls = [fresh_server.url("/ok?x=1"), fresh_server.url("/ok?x=2"), fresh_server.url("/ok?x=1")]
    records = await fetch_all(urls, dedupe=True)
    assert sorted(record.index for record in records) == [0, 1]
    assert fresh_server.hits("/ok") == 2


async def test_dedupe_and_ordered_together_keep_order_and_skip_duplicates(fresh_server: TestServer) -> None:
    """With both, records are the first occurrences in input order, indexes leaving gaps where duplicates were."""
    slow, fast = fresh_server.url("/sleep/200"), fresh_server.url("/ok")
    records = await fetch_all([slow, fast, slow, fast, fresh_server.url("/ok?n=2")], dedupe=True, ordered=True)
    assert [record.index for record in records] == [0, 1, 4]


def test_dedupe_cli_spans_all_inputs(fresh_server: TestServer, tmp_path: Path) -> None:
    """--dedupe drops a URL of the second INPUT already seen in the first; indexes run across both files."""
    first, second = tmp_path / "one.txt", tmp_path / "two.txt"
    first.write_text(f"{fresh_server.url('/ok?f=1')}\n{fresh_server.url('/ok?f=2')}\n")
    second.write_text(f"{fresh_server.url('/ok?f=2')}\n{fresh_server.url('/ok?f=3')}\n")
    result = run_cli("-q", "--dedupe", str(first), str(second))
    assert result.returncode == 0, result.stderr
    records = records_of(result.stdout)
    assert sorted(record["index"] for record in records) == [0, 1, 3]
    assert fresh_server.hits("/ok?f=2") == 1


def test_resume_with_dedupe_does_not_fetch_a_duplicate_of_a_recorded_url(
    fresh_server: TestServer, tmp_path: Path
) -> None:
    """--resume --dedupe: a later duplicate of a URL the earlier run already recorded gets no record and no fetch."""
    output = tmp_path / "out.jsonl"
    repeated, other = fresh_server.url("/ok?r=1"), fresh_server.url("/ok?r=2")
    first = run_cli("-q", "--dedupe", "-o", str(output), input=f"{repeated}\n")  # a run cut short after one
    assert first.returncode == 0, first.stderr
    again = run_cli("-q", "--dedupe", "--resume", "-o", str(output), input=f"{repeated}\n{other}\n{repeated}\n")
    assert again.returncode == 0, again.stderr
    records = records_of(output.read_bytes())
    assert sorted((record["index"], record["url"]) for record in records) == [(0, repeated), (1, other)]
    assert fresh_server.hits("/ok?r=1") == 1


# -- the dedupe set --------------------------------------------------------------------------------
def test_seen_set_says_new_once_per_url() -> None:
    """SeenSet.add is True for a URL's first appearance only, and len counts distinct URLs."""
    seen = SeenSet()
    assert seen.add("https://example.com/a")
    assert not seen.add("https://example.com/a")
    assert seen.add("https://example.com/b")
    assert seen.add("https://example.com/A")  # URLs are compared as given
    assert len(seen) == 3


def test_seen_set_remembers_every_url_across_growth() -> None:
    """After growing many times from a small table, SeenSet still knows every URL it was given and no other."""
    seen = SeenSet(capacity=8)
    urls = [f"https://example.com/page/{i}" for i in range(50_000)]
    assert all(seen.add(url) for url in urls)
    assert not any(seen.add(url) for url in urls)
    assert len(seen) == 50_000
    assert seen.add("https://example.com/page/50000")


def test_seen_set_memory_stays_within_24_bytes_per_url() -> None:
    """100,000 distinct URLs cost SeenSet at most 24 bytes each, measured by Python's allocator, not only its report."""
    count = 100_000
    urls = (f"https://host{i % 97}.example/item?id={i}" for i in range(count))
    tracemalloc.start()
    try:
        seen = SeenSet()
        for url in urls:
            seen.add(url)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(seen) == count
    assert seen.memory_bytes <= 24 * count
    assert held <= 24 * count + 64 * 1024
    # While the table doubles, old and new tables exist together for a moment.
    assert peak <= 3 * 24 * count
