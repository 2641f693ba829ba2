"""--resume's scan of an earlier output: torn tail cut, records matched by index and url, flat memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from asyncfetch.record import Record
from asyncfetch.resume import DoneSet, scan_output


def record_line(index: int, url: str, **fields: object) -> bytes:
    """The line the engine writes for a plain successful GET of ``url``."""
    return Record(url=url, index=index, method="GET", status=200, **fields).to_line()  # type: ignore[arg-type]


def write(path: Path, *chunks: bytes) -> Path:
    path.write_bytes(b"".join(chunks))
    return path


# -- the torn last line ------------------------------------------------------------------------------
def test_a_torn_last_line_is_cut_from_the_file(tmp_path: Path) -> None:
    """The partial line a killed run left is truncated away; the complete records before it are kept and counted."""
    whole = record_line(0, "https://a.example/") + record_line(1, "https://b.example/")
    path = write(tmp_path / "out.jsonl", whole, record_line(2, "https://c.example/")[:40])
    done = scan_output(str(path))
    assert path.read_bytes() == whole
    assert done.count == 2
    assert done(0, "https://a.example/")
    assert done(1, "https://b.example/")
    assert not done(2, "https://c.example/")


def test_a_last_line_without_its_newline_counts_as_torn(tmp_path: Path) -> None:
    """A last line missing its newline is cut even if it happens to parse: the writer never finished it."""
    first = record_line(0, "https://a.example/")
    path = write(tmp_path / "out.jsonl", first, record_line(1, "https://b.example/")[:-1])
    done = scan_output(str(path))
    assert path.read_bytes() == first
    assert not done(1, "https://b.example/")


def test_a_file_with_no_complete_line_is_emptied(tmp_path: Path) -> None:
    """A file holding only a partial first line is truncated to nothing and records nothing."""
    path = write(tmp_path / "out.jsonl", b'{"url":"https://a.exa')
    done = scan_output(str(path))
    assert path.read_bytes() == b""
    assert done.count == 0


def test_a_torn_line_longer_than_the_scan_block_is_cut(tmp_path: Path) -> None:
    """A torn last line of 1.5 MiB (longer than one block read from the end) is cut at the last newline."""
    first = record_line(0, "https://a.example/")
    path = write(tmp_path / "out.jsonl", first, b'{"url":"https://b.example/","index":1,"body":"' + b"x" * (3 << 19))
    done = scan_output(str(path))
    assert path.read_bytes() == first
    assert done.count == 1


def test_an_intact_file_is_left_byte_for_byte(tmp_path: Path) -> None:
    """A file ending in a newline is not modified by the scan."""
    content = b"".join(record_line(i, f"https://a.example/{i}") for i in range(5))
    path = write(tmp_path / "out.jsonl", content)
    before = path.stat().st_mtime_ns
    done = scan_output(str(path))
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == before
    assert done.count == 5


def test_a_missing_file_is_an_empty_run_and_is_not_created(tmp_path: Path) -> None:
    """Resuming into a file that does not exist yet records nothing and leaves no file behind."""
    path = tmp_path / "absent.jsonl"
    done = scan_output(str(path))
    assert done.count == 0
    assert not done(0, "https://a.example/")
    assert not path.exists()


# -- matching ----------------------------------------------------------------------------------------
def test_a_record_matches_only_its_own_index_and_url(tmp_path: Path) -> None:
    """A request is done only when a record has both its index and its URL: either alone is not enough."""
    path = write(tmp_path / "out.jsonl", record_line(3, "https://a.example/x"))
    done = scan_output(str(path))
    assert done(3, "https://a.example/x")
    assert not done(3, "https://a.example/y")  # same index, another URL: the input changed
    assert not done(4, "https://a.example/x")  # same URL at another index: a duplicate line
    assert not done(2, "https://a.example/x")
    assert not done(10**9, "https://a.example/x")


def test_error_records_and_records_with_ids_count_as_done(tmp_path: Path) -> None:
    """Any record, error or not, with an id or not, marks its request done (--resume does not retry failures)."""
    lines = [
        Record(url="ftp://x/", index=0, method="GET").to_line(),
        record_line(1, "https://b.example/", id={"k": [1, 2]}),
        record_line(2, "https://c.example/", id="\ud800"),  # a lone surrogate: the ASCII-escaped form
    ]
    done = scan_output(str(write(tmp_path / "out.jsonl", *lines)))
    assert done(0, "ftp://x/")
    assert done(1, "https://b.example/")
    assert done(2, "https://c.example/")


def test_urls_with_escapes_and_non_ascii_letters_are_matched(tmp_path: Path) -> None:
    """URLs whose JSON form has escapes (quotes, backslashes, controls) or UTF-8 letters are read back exactly."""
    urls = [
        'https://a.example/say"hi"',
        "https://a.example/back\\slash",
        "https://b.example/café/\u2028",
        "https://c.example/\t",
    ]
    done = scan_output(str(write(tmp_path / "out.jsonl", *(record_line(i, url) for i, url in enumerate(urls)))))
    assert all(done(i, url) for i, url in enumerate(urls))
    assert not done(2, "https://b.example/cafe/\u2028")


def test_records_written_by_other_tools_are_recognised(tmp_path: Path) -> None:
    """Records re-serialised with other key orders or spacing (by jq, say) still count."""
    lines = [
        json.dumps({"index": 0, "url": "https://a.example/"}).encode() + b"\n",
        json.dumps({"url": "https://b.example/", "index": 1}, indent=None, separators=(", ", ": ")).encode() + b"\n",
        b'  {"status":200,"url":"https://c.example/","index":2}\n',
    ]
    done = scan_output(str(write(tmp_path / "out.jsonl", *lines)))
    assert done.count == 3
    assert done(0, "https://a.example/")
    assert done(1, "https://b.example/")
    assert done(2, "https://c.example/")


def test_lines_that_are_not_records_are_ignored(tmp_path: Path) -> None:
    """Garbage, blank lines, non-objects, and objects without an integer index and a string url are skipped."""
    lines = [
        b"not json at all\n",
        b"\n",
        b"[1, 2, 3]\n",
        b'"a string"\n',
        b'{"url":"https://a.example/"}\n',
        b'{"index":1}\n',
        b'{"url":"https://a.example/","index":true}\n',
        b'{"url":"https://a.example/","index":"3"}\n',
        b'{"url":"https://a.example/","index":4.0}\n',
        b'{"url":5,"index":5}\n',
        record_line(6, "https://ok.example/"),
    ]
    done = scan_output(str(write(tmp_path / "out.jsonl", *lines)))
    assert done.count == 1
    assert done(6, "https://ok.example/")
    assert not done(1, "https://a.example/")
    assert not done(3, "https://a.example/")


def test_a_negative_index_is_not_a_record(tmp_path: Path) -> None:
    """A line with a negative index is ignored like any other non-record, wherever it appears."""
    path = write(
        tmp_path / "out.jsonl", b'{"url":"https://a.example/","index":-1}\n', record_line(2, "https://b.example/")
    )
    done = scan_output(str(path))
    assert done.count == 1
    assert done(2, "https://b.example/")


# -- the DoneSet -------------------------------------------------------------------------------------
def test_done_set_counts_distinct_indexes() -> None:
    """DoneSet.count is the number of distinct indexes added, in any order, re-adds not counted twice."""
    done = DoneSet()
    for index in (5, 0, 5, 70_000, 3):
        done.add(index, f"https://a.example/{index}")
    assert done.count == 4
    assert done(70_000, "https://a.example/70000")
    assert not done(69_999, "https://a.example/69999")


def test_done_set_costs_at_most_16_bytes_per_index_at_every_size() -> None:
    """Adding records in index order, the DoneSet never costs more than 16 bytes per index (8, plus growth room)."""
    done = DoneSet()
    worst = 0.0
    for index in range(100_000):
        done.add(index, "https://a.example/")
        if index >= 10_000:
            worst = max(worst, done.memory_bytes / (index + 1))
    assert done.count == 100_000
    assert worst <= 16, f"{worst:.1f} bytes per index"


def test_a_first_record_at_a_high_index_costs_about_8_bytes_per_index() -> None:
    """A lone record at index 1,000,000 costs the DoneSet about 8 MB (8 bytes per index below it), at most 16 MB."""
    done = DoneSet()
    done.add(1_000_000, "https://a.example/")
    assert done(1_000_000, "https://a.example/")
    assert done.memory_bytes <= 16 * 1_000_000


def test_a_large_output_is_scanned_without_holding_its_records(tmp_path: Path) -> None:
    """Scanning 20,000 records (over 20 MB) allocates little more than the DoneSet itself: records are not kept."""
    count = 20_000
    template = record_line(0, "https://host.example/item/0", id="x" * 1000)
    path = tmp_path / "big.jsonl"
    with path.open("wb") as file:
        for index in range(count):
            file.write(template.replace(b'"index":0', b'"index":%d' % index).replace(b"/item/0", b"/item/%d" % index))
    assert path.stat().st_size > 1000 * count
    tracemalloc.start()
    try:
        done = scan_output(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done.count == count
    assert done(count - 1, f"https://host.example/item/{count - 1}")
    # The file is over 20 MB; the DoneSet, a few hundred kB to a few MB.
    assert peak <= done.memory_bytes + 2 * 1024 * 1024, peak
