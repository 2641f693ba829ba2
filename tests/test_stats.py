"""Run statistics: totals, latency percentiles, and per-host figures bounded in memory."""

from __future__ import annotations

import json

import pytest

from asyncfetch.errors import ErrorKind, Failure
from asyncfetch.record import Record
from asyncfetch.stats import HostTable, RunStats, host_of


def _record(url: str, elapsed_ms: float, *, status: int | None = 200, kind: ErrorKind | None = None) -> Record:
    error = Failure(kind, "x") if kind is not None else None
    return Record(url=url, index=0, method="GET", status=status, elapsed_ms=elapsed_ms, attempts=1, error=error)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://Example.COM/a?b", "example.com"),
        ("http://user:pw@h.test:8080/x", "h.test:8080"),
        ("http://[::1]:81/", "[::1]:81"),
        ("https://h.test?q", "h.test"),
        ("not a url", None),
        ("https:///nohost", None),
    ],
)
def test_the_host_of_a_url_is_lower_case_with_its_port_and_without_credentials(url: str, host: str | None) -> None:
    """Hosts are keyed as the URL names them, lower-case, userinfo removed."""
    assert host_of(url) == host


def test_hosts_are_not_tracked_unless_asked() -> None:
    """A plain RunStats keeps no per-host table (the default run pays nothing for it)."""
    stats = RunStats()
    stats.add(_record("http://a.test/", 5))
    assert stats.hosts is None
    assert "hosts" not in stats.to_dict()


def test_the_slowest_and_most_failing_hosts_are_ranked() -> None:
    """Top hosts by p95 latency, and by errors then statuses >= 400 (hosts without failures left out)."""
    stats = RunStats(hosts=HostTable())
    for _ in range(20):
        stats.add(_record("http://fast.test/", 2))
        stats.add(_record("http://slow.test/", 900))
        stats.add(_record("http://mid.test/", 80, status=500))
    for _ in range(3):
        stats.add(_record("http://down.test/", 10, status=None, kind=ErrorKind.CONNECT))
    table = stats.hosts
    assert table is not None
    assert [host for host, _ in table.slowest(2)] == ["slow.test", "mid.test"]
    assert [host for host, _ in table.most_failing()] == ["down.test", "mid.test"]
    slow = table.hosts["slow.test"].percentile(0.95)
    assert 900 / 1.1 <= slow <= 900 * 1.1


def test_the_host_table_stays_bounded_and_keeps_the_failing_and_the_slow() -> None:
    """Past its limit the table is cut down, and the hosts worth reporting survive the cut."""
    table = HostTable(limit=100)
    table.add("http://failing.test/", 1, 0, "timeout", None)
    table.add("http://slowest.test/", 50_000, 0, None, 200)
    for i in range(10_000):
        table.add(f"http://h{i}.test/", 5, 10, None, 200)
        assert len(table.hosts) <= 100
    assert "failing.test" in table.hosts
    assert "slowest.test" in table.hosts
    assert table.dropped > 9_000
    assert table.most_failing(1)[0][0] == "failing.test"
    assert table.slowest(1)[0][0] == "slowest.test"


def test_the_summary_object_is_json_with_totals_kinds_percentiles_and_hosts() -> None:
    """to_dict gives one JSON object: totals, errors by kind, latency overall and per host, bytes."""
    stats = RunStats(hosts=HostTable())
    stats.add(_record("http://a.test/x", 10))
    stats.add(_record("http://a.test/y", 30, status=404))
    stats.add(_record("http://b.test/", 5, status=None, kind=ErrorKind.TIMEOUT))
    summary = json.loads(json.dumps(stats.to_dict(interrupted=True)))
    assert summary["requests"] == 3
    assert (summary["ok"], summary["http_errors"], summary["errors"]) == (1, 1, 1)
    assert summary["errors_by_kind"] == {"timeout": 1}
    assert summary["interrupted"] is True
    assert set(summary["latency_ms"]) == {"p50", "p90", "p95", "p99"}
    assert summary["bytes"] == 0
    assert set(summary["connections"]) == {"opened", "reused", "tls_resumed"}
    hosts = summary["hosts"]
    assert hosts["tracked"] == 2
    assert hosts["by_host"]["a.test"]["requests"] == 2
    assert hosts["by_host"]["a.test"]["http_errors"] == 1
    assert hosts["most_failing"] == ["b.test", "a.test"]


def test_records_known_only_as_json_lines_count_per_host_too() -> None:
    """Records collected from a queue (JSON lines) feed the per-host table like records do."""
    stats = RunStats(hosts=HostTable())
    stats.note_json(_record("http://q.test/", 12).to_line())
    assert stats.hosts is not None
    assert stats.hosts.hosts["q.test"].records == 1
