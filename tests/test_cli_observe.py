"""The command line of issue 13: --timings, --tls, --fields, CSV/TSV and gzip input, the per-host summary."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tests.conftest import records_of, run_cli
from tests.server import TestServer


def test_timings_tls_and_fields_from_the_command_line(server: TestServer) -> None:
    """--timings --fields url,status,timings gives small records with the timings object."""
    result = run_cli("--timings", "--fields", "url,status,timings", server.url("/ok"))
    assert result.returncode == 0, result.stderr
    [record] = records_of(result.stdout)
    assert list(record) == ["url", "status", "timings"]
    assert set(record["timings"]) == {"dns", "connect", "tls", "ttfb", "total"}


def test_the_options_are_read_from_the_environment_too(server: TestServer) -> None:
    """ASYNCFETCH_TIMINGS, ASYNCFETCH_TLS and ASYNCFETCH_FIELDS work as the flags do."""
    env = {"ASYNCFETCH_TIMINGS": "1", "ASYNCFETCH_TLS": "1", "ASYNCFETCH_FIELDS": "url,timings,tls"}
    result = run_cli(server.url("/ok"), env=env)
    assert result.returncode == 0, result.stderr
    [record] = records_of(result.stdout)
    assert list(record) == ["url", "timings", "tls"]
    assert record["tls"] is None  # plain HTTP


def test_tls_facts_under_insecure(tls_server: TestServer) -> None:
    """--tls -k describes the certificate it did not verify."""
    result = run_cli("--tls", "-k", tls_server.url("/ok"))
    assert result.returncode == 0, result.stderr
    [record] = records_of(result.stdout)
    assert "127.0.0.1" in record["tls"]["sans"]
    assert isinstance(record["tls"]["expires_in_days"], int)


def test_an_unknown_field_is_a_usage_error(server: TestServer) -> None:
    """--fields with a name records do not have: exit 2, the valid names shown, nothing fetched."""
    result = run_cli("--fields", "url,colour", server.url("/ok"))
    assert result.returncode == 2
    assert result.stdout == b""
    message = result.stderr.decode()
    assert "colour" in message
    assert "sha256" in message
    assert "Traceback" not in message


def test_the_default_record_has_remote_ip_and_port(server: TestServer) -> None:
    """Without options the record names the address that answered."""
    result = run_cli(server.url("/ok"))
    [record] = records_of(result.stdout)
    assert (record["remote_ip"], record["remote_port"]) == ("127.0.0.1", server.port)
    assert "timings" not in record
    assert "tls" not in record


def test_a_csv_file_carries_its_columns_into_the_records(tmp_path: Path, server: TestServer) -> None:
    """A .csv INPUT: quoted commas, embedded newlines and a BOM survive; other columns become input."""
    path = tmp_path / "sites.csv"
    path.write_bytes(
        b"\xef\xbb\xbfname,URL,note\r\n"
        + f'"Acme, Inc.",{server.url("/ok")},"line one\r\nline two"\r\n'.encode()
        + f"Other,{server.url('/status/404')},x\r\n".encode()
    )
    result = run_cli("--ordered", str(path))
    assert result.returncode == 0, result.stderr
    first, second = records_of(result.stdout)
    assert first["input"] == {"name": "Acme, Inc.", "note": "line one\r\nline two"}
    assert first["status"] == 200
    assert second["input"] == {"name": "Other", "note": "x"}
    assert second["status"] == 404


def test_gzip_csv_on_standard_input_with_a_named_url_column(server: TestServer) -> None:
    """--csv reads stdin as CSV; gzip is recognised on stdin too; --url-column picks the column."""
    data = gzip.compress(f"id,link\n7,{server.url('/ok')}\n".encode())
    result = run_cli("--csv", "--url-column", "LINK", "-", input=data)
    assert result.returncode == 0, result.stderr
    [record] = records_of(result.stdout)
    assert record["url"] == server.url("/ok")
    assert record["input"] == {"id": "7"}


def test_a_gzip_url_list_is_read_by_its_bytes(tmp_path: Path, server: TestServer) -> None:
    """A gzip-compressed URL list is inflated, whatever its name."""
    path = tmp_path / "urls.txt.gz"
    path.write_bytes(gzip.compress(f"{server.url('/ok')}\n{server.url('/ok')}\n".encode()))
    result = run_cli(str(path))
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in records_of(result.stdout)] == [200, 200]


def test_a_tsv_row_that_does_not_parse_is_an_invalid_input_record(tmp_path: Path, server: TestServer) -> None:
    """A bad row gives invalid_input with its line number; the rows after it are fetched."""
    path = tmp_path / "list.tsv"
    path.write_text(f"url\tn\n{server.url('/ok')}\t1\t2\n{server.url('/ok')}\t3\n", encoding="utf-8")
    result = run_cli("--ordered", str(path))
    assert result.returncode == 1
    bad, good = records_of(result.stdout)
    assert bad["error"]["kind"] == "invalid_input"
    assert "line 2" in bad["error"]["message"]
    assert good["status"] == 200


def test_a_table_without_its_url_column_is_a_usage_error(tmp_path: Path) -> None:
    """No url column: exit 2 naming the columns, no traceback, no records."""
    path = tmp_path / "x.csv"
    path.write_text("name,site\na,b\n", encoding="utf-8")
    result = run_cli(str(path))
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"no column named 'url'" in result.stderr
    assert b"Traceback" not in result.stderr


def test_csv_and_tsv_together_is_a_usage_error() -> None:
    """--csv --tsv: exit 2."""
    result = run_cli("--csv", "--tsv", "-", input="")
    assert result.returncode == 2
    assert b"--csv and --tsv" in result.stderr


def test_summary_json_writes_the_whole_summary_with_hosts(
    tmp_path: Path, server: TestServer, other_fresh_server: TestServer
) -> None:
    """--summary-json FILE: one JSON object with totals, errors by kind, latency and per-host figures."""
    target = tmp_path / "summary.json"
    urls = f"{server.url('/ok')}\n{server.url('/status/500')}\n{other_fresh_server.url('/close')}\n"
    result = run_cli("-r", "0", "--summary-json", str(target), "-", input=urls)
    assert result.returncode == 1
    summary = json.loads(target.read_text(encoding="utf-8"))
    assert summary["requests"] == 3
    assert summary["errors_by_kind"] == {"protocol": 1}
    assert summary["http_errors"] == 1
    assert set(summary["latency_ms"]) >= {"p50", "p95", "p99"}
    hosts = summary["hosts"]["by_host"]
    assert hosts[f"127.0.0.1:{server.port}"]["requests"] == 2
    assert summary["hosts"]["most_failing"][0] == f"127.0.0.1:{other_fresh_server.port}"


def test_summary_names_the_slowest_and_most_failing_hosts(server: TestServer, other_fresh_server: TestServer) -> None:
    """--summary on stderr lists hosts by p95 latency and by errors."""
    urls = f"{server.url('/sleep/50')}\n{other_fresh_server.url('/close')}\n"
    result = run_cli("-r", "0", "--summary", "-", input=urls)
    text = result.stderr.decode()
    assert "slowest hosts (p95):" in text
    assert f"127.0.0.1:{server.port}" in text
    assert "most failing hosts:" in text
    failing = text.split("most failing hosts:")[1]
    assert f"127.0.0.1:{other_fresh_server.port}" in failing


def test_enqueue_refuses_a_csv_input(tmp_path: Path) -> None:
    """enqueue reads lines only: a .csv INPUT is a usage error, before Redis is even asked."""
    path = tmp_path / "rows.csv"
    path.write_text("url\nhttp://a.test/\n", encoding="utf-8")
    result = run_cli("enqueue", "--redis", "redis://127.0.0.1:1/0", str(path))
    assert result.returncode == 2
    assert b"one-machine run only" in result.stderr
