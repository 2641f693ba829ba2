"""Input formats: CSV and TSV rows with their columns carried through, gzip for every format."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from asyncfetch.source import InputError, InputReader, LineReader, estimate_total, format_of
from asyncfetch.spec import TableRow
from tests.conftest import collect
from tests.server import TestServer

pytestmark = pytest.mark.anyio

_AWKWARD_CSV = (
    '\ufeffName,URL,Note\r\n"Smith, John",{ok},"said ""hi"""\r\n"Doe, Jane",{ok},"two\r\nlines, and a comma"\r\n'
)


async def _items(paths: list[str], **kwargs: object) -> list[str | TableRow]:
    return [item async for item in InputReader(paths, **kwargs)]  # type: ignore[arg-type]


def test_the_format_follows_the_name_unless_forced() -> None:
    """.csv and .tsv (also gzip-compressed) are tables; anything else is lines; a forced format wins."""
    assert format_of("a.csv") == "csv"
    assert format_of("A.CSV.GZ") == "csv"
    assert format_of("a.tsv.gz") == "tsv"
    assert format_of("a.txt") == "lines"
    assert format_of("a.txt.gz") == "lines"
    assert format_of("-", "tsv") == "tsv"
    assert format_of("a.csv", "lines") == "lines"


async def test_csv_rows_keep_quoted_commas_embedded_newlines_and_lose_the_bom(tmp_path: Path) -> None:
    """RFC 4180 quoting: commas and CRLFs inside quotes are data; the BOM is not part of the first name."""
    path = tmp_path / "people.csv"
    path.write_text(_AWKWARD_CSV.format(ok="http://x.test/ok"), encoding="utf-8", newline="")
    rows = await _items([str(path)])
    assert rows == [
        TableRow("http://x.test/ok", {"Name": "Smith, John", "Note": 'said "hi"'}),
        TableRow("http://x.test/ok", {"Name": "Doe, Jane", "Note": "two\r\nlines, and a comma"}),
    ]


async def test_every_other_column_is_carried_into_the_record_as_input(tmp_path: Path, server: TestServer) -> None:
    """A fetched CSV row's record has its URL and an input object of the other columns."""
    path = tmp_path / "people.csv"
    path.write_text(_AWKWARD_CSV.format(ok=server.url("/ok")), encoding="utf-8", newline="")
    records = await collect(InputReader([str(path)]), ordered=True)
    assert [r.status for r in records] == [200, 200]
    first = json.loads(records[0].to_json())
    assert first["url"] == server.url("/ok")
    assert first["input"] == {"Name": "Smith, John", "Note": 'said "hi"'}
    assert list(first)[:3] == ["url", "index", "input"]


async def test_tsv_is_split_on_tabs(tmp_path: Path) -> None:
    """A .tsv file is split on tabs; commas in it are data."""
    path = tmp_path / "list.tsv"
    path.write_text("url\tlabel\nexample.com\ta, b\n", encoding="utf-8")
    assert await _items([str(path)]) == [TableRow("example.com", {"label": "a, b"})]


async def test_the_url_column_is_found_without_regard_to_case_or_named(tmp_path: Path) -> None:
    """The default column is url in any case; url_column names another."""
    path = tmp_path / "links.csv"
    path.write_text("id,Link,Url\n1,http://a.test/,http://b.test/\n", encoding="utf-8")
    assert await _items([str(path)]) == [TableRow("http://b.test/", {"id": "1", "Link": "http://a.test/"})]
    assert await _items([str(path)], url_column="LINK") == [
        TableRow("http://a.test/", {"id": "1", "Url": "http://b.test/"})
    ]


async def test_a_table_without_the_url_column_is_an_input_error_naming_the_columns(tmp_path: Path) -> None:
    """No url column: a usage error that lists the columns there are."""
    path = tmp_path / "nourl.csv"
    path.write_text("name,site\nx,y\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"no column named 'url' \(columns: name, site\)"):
        await _items([str(path)])


async def test_rows_that_do_not_parse_are_invalid_input_records_and_the_run_goes_on(
    tmp_path: Path, server: TestServer
) -> None:
    """A row with too many fields and a row with broken quoting each give invalid_input with its line."""
    ok = server.url("/ok")
    path = tmp_path / "bad.csv"
    path.write_text(f'url,n\n{ok},1\n{ok},2,extra\n"{ok}"x,3\n{ok},4\n', encoding="utf-8")
    records = await collect(InputReader([str(path)]), ordered=True)
    assert [r.status for r in records] == [200, None, None, 200]
    wrong_width, broken = records[1], records[2]
    assert wrong_width.error is not None
    assert wrong_width.error.kind.value == "invalid_input"
    assert "line 3:" in wrong_width.error.message
    assert "3 fields where the header has 2" in wrong_width.error.message
    assert broken.error is not None
    assert broken.error.kind.value == "invalid_input"
    assert "line 4:" in broken.error.message
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert json.loads(records[3].to_json())["input"] == {"n": "4"}


async def test_a_url_cell_is_a_url_even_when_it_looks_like_json(tmp_path: Path) -> None:
    """A CSV cell is never read as a JSON request object, and blank rows are skipped."""
    path = tmp_path / "odd.csv"
    path.write_text('url\n"{""url"": ""http://a.test/""}"\n\n,\n', encoding="utf-8")
    records = await collect(InputReader([str(path)]))
    assert len(records) == 1
    assert records[0].error is not None
    assert records[0].error.kind.value == "invalid_url"


async def test_gzip_input_is_inflated_for_lines_and_tables(tmp_path: Path) -> None:
    """A gzip file is recognised by its bytes: a URL list and a .csv.gz read as their plain forms."""
    lines = tmp_path / "urls.txt.gz"
    lines.write_bytes(gzip.compress(b"\xef\xbb\xbfhttp://a.test/\n# comment\nhttp://b.test/\n"))
    assert await _items([str(lines)]) == ["http://a.test/", "http://b.test/"]
    table = tmp_path / "rows.csv.gz"
    table.write_bytes(gzip.compress(b'url,note\nhttp://a.test/,"x\ny"\n'))
    assert await _items([str(table)]) == [TableRow("http://a.test/", {"note": "x\ny"})]
    misnamed = tmp_path / "plain-name"
    misnamed.write_bytes(gzip.compress(b"http://c.test/\n"))
    assert await _items([str(misnamed)]) == ["http://c.test/"]


async def test_concatenated_gzip_members_are_all_read(tmp_path: Path) -> None:
    """cat a.gz b.gz is one input of both."""
    path = tmp_path / "both.gz"
    path.write_bytes(gzip.compress(b"http://a.test/\n") + gzip.compress(b"http://b.test/\n"))
    assert await _items([str(path)]) == ["http://a.test/", "http://b.test/"]


async def test_a_large_gzip_input_streams_through(tmp_path: Path) -> None:
    """Far more inflated data than one step's output limit arrives whole and in order."""
    lines = [f"http://h{i}.test/{'x' * 50}" for i in range(50_000)]
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    assert await _items([str(path)]) == lines


async def test_truncated_gzip_is_an_input_error(tmp_path: Path) -> None:
    """A .gz cut short is reported, not taken as a shorter list."""
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(b"http://a.test/\n" * 1000)[:-12])
    with pytest.raises(InputError, match="truncated"):
        await _items([str(path)])


async def test_corrupt_gzip_is_an_input_error(tmp_path: Path) -> None:
    """Bytes that start like gzip but are not: an input error."""
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8bnot gzip at all")
    with pytest.raises(InputError, match="not valid gzip"):
        await _items([str(path)])


def test_the_progress_estimate_skips_compressed_files_and_counts_rows(tmp_path: Path) -> None:
    """No estimate for a .gz (it would count compressed bytes); a CSV's header is not a request."""
    packed = tmp_path / "a.gz"
    packed.write_bytes(gzip.compress(b"http://a.test/\n"))
    assert estimate_total([str(packed)]) is None
    table = tmp_path / "a.csv"
    table.write_text("url\nhttp://a.test/\nhttp://b.test/\n", encoding="utf-8")
    assert estimate_total([str(table)]) == 2


async def test_the_line_reader_reads_a_csv_name_as_lines_but_still_inflates_gzip(tmp_path: Path) -> None:
    """LineReader (what enqueue reads) takes every INPUT as lines; a gzip one is inflated all the same."""
    path = tmp_path / "rows.csv.gz"
    path.write_bytes(gzip.compress(b"url\nhttp://a.test/\n"))
    assert [line async for line in LineReader([str(path)])] == ["url", "http://a.test/"]
