"""Running totals over records, for the progress bar, the summary and the exit status.

Per-host figures (for ``--summary`` and ``--summary-json``) stay bounded however many hosts a
run meets: each host is a few counters and a fixed histogram of 64 latency buckets (~0.5 KB),
and at most :data:`MAX_HOSTS` hosts are tracked. When a new host would pass the cap, the table
is cut to half, keeping the hosts with the most failures and those with the highest p95
latency: the top five of each stay right, the long tail of quiet, fast hosts is what is
dropped (their records still count in the totals).
"""

from __future__ import annotations

import json
import math
import re
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from asyncfetch.record import Outcome, Record, outcome_of
from asyncfetch.values import MutableValue

# Latency histogram: buckets 2 % wide on a log scale, from 0.01 ms to ~hours: fixed memory.
_GROWTH = math.log(1.02)
_FLOOR_MS = 0.01

MAX_HOSTS = 10_000
TOP_HOSTS = 5
# Per-host latency: 64 buckets 20 % wide from 1 ms (the last one holds everything past ~97 s).
_HOST_BUCKETS = 64
_HOST_GROWTH = math.log(1.2)
_HOST = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#]*)")
_QUANTILES = (0.5, 0.9, 0.95, 0.99)


def host_of(url: str) -> str | None:
    """The host (and port, when the URL has one) of a URL, lower-case; None when it has none."""
    match = _HOST.match(url)
    if match is None or not match.group(1):
        return None
    return match.group(1).lower()


class HostStats:
    """One host's counts and a coarse latency histogram (64 buckets, fixed size)."""

    __slots__ = ("bytes_received", "errors", "http_errors", "latency", "records")

    def __init__(self) -> None:
        self.records = 0
        self.errors = 0
        self.http_errors = 0
        self.bytes_received = 0
        self.latency = array("I", bytes(4 * _HOST_BUCKETS))

    def add(self, elapsed_ms: float, size: int, error_kind: str | None, status: int | None) -> None:
        self.records += 1
        self.bytes_received += size
        if error_kind is not None:
            self.errors += 1
        elif status is not None and status >= 400:
            self.http_errors += 1
        bucket = int(math.log(max(elapsed_ms, 1.0)) / _HOST_GROWTH)
        self.latency[min(bucket, _HOST_BUCKETS - 1)] += 1

    def percentile(self, fraction: float) -> float:
        """Approximate latency (ms, within 10 %) below which ``fraction`` of this host's fetches fall."""
        rank = fraction * self.records
        seen = 0
        for bucket, count in enumerate(self.latency):
            seen += count
            if count and seen >= rank:
                return math.exp((bucket + 0.5) * _HOST_GROWTH)
        return 0.0

    def failures(self) -> tuple[int, int]:
        return (self.errors, self.http_errors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.records,
            "ok": self.records - self.errors - self.http_errors,
            "http_errors": self.http_errors,
            "errors": self.errors,
            "bytes": self.bytes_received,
            "latency_ms": {f"p{round(q * 100)}": round(self.percentile(q), 1) for q in _QUANTILES},
        }


class HostTable:
    """Per-host stats for at most ``limit`` hosts (see the module docstring for what is dropped)."""

    def __init__(self, limit: int = MAX_HOSTS) -> None:
        self.limit = max(limit, 2 * TOP_HOSTS)
        self.hosts: dict[str, HostStats] = {}
        self.dropped = 0  # hosts dropped to stay within the limit

    def add(self, url: str, elapsed_ms: float, size: int, error_kind: str | None, status: int | None) -> None:
        host = host_of(url)
        if host is None:
            return
        stats = self.hosts.get(host)
        if stats is None:
            if len(self.hosts) >= self.limit:
                self._prune()
            stats = self.hosts[host] = HostStats()
        stats.add(elapsed_ms, size, error_kind, status)

    def _prune(self) -> None:
        keep = self.limit // 2
        hosts = self.hosts
        failing = sorted(hosts, key=lambda h: hosts[h].failures(), reverse=True)[: keep // 2]
        slow = sorted(hosts, key=lambda h: hosts[h].percentile(0.95), reverse=True)[: keep - len(failing)]
        kept = dict.fromkeys(failing + slow)
        self.dropped += len(hosts) - len(kept)
        self.hosts = {host: hosts[host] for host in kept}

    def slowest(self, n: int = TOP_HOSTS) -> list[tuple[str, HostStats]]:
        """The ``n`` hosts with the highest p95 latency."""
        ranked = sorted(self.hosts.items(), key=lambda item: item[1].percentile(0.95), reverse=True)
        return ranked[:n]

    def most_failing(self, n: int = TOP_HOSTS) -> list[tuple[str, HostStats]]:
        """The ``n`` hosts with the most error records (then the most statuses >= 400), failures only."""
        failing = [item for item in self.hosts.items() if item[1].errors or item[1].http_errors]
        failing.sort(key=lambda item: item[1].failures(), reverse=True)
        return failing[:n]


@dataclass(slots=True, eq=False, repr=False)
class RunStats(MutableValue):
    """Counts by outcome, attempts, bytes and a latency histogram, updated per record."""

    started: float = field(default_factory=time.monotonic)
    records: int = 0
    ok: int = 0
    http_errors: int = 0  # status >= 400, no error
    errors: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    bytes_received: int = 0
    # From the connection pool, once the run ends (records do not carry them); None where no
    # pool was counted (the records of a queue, collected).
    connections_opened: int | None = None
    connections_reused: int | None = None
    tls_resumed: int | None = None
    _latency: Counter[int] = field(default_factory=Counter)
    # Per-host figures, only when a summary will show them (None: not kept).
    hosts: HostTable | None = None

    def add(self, record: Record) -> None:
        """Count one record."""
        kind = record.error.kind.value if record.error is not None else None
        self._count(record.attempts, record.size, kind, record.status, record.elapsed_ms)
        if self.hosts is not None and record.attempts:
            self.hosts.add(record.url, record.elapsed_ms, record.size, kind, record.status)

    def note_json(self, line: bytes) -> None:
        """Count a record known only as its JSON line (records collected from a queue)."""
        fields = json.loads(line)
        error = fields.get("error") or {}
        attempts, size, kind = fields.get("attempts", 0), fields.get("size", 0), error.get("kind")
        status, elapsed_ms = fields.get("status"), fields.get("elapsed_ms", 0.0)
        self._count(attempts, size, kind, status, elapsed_ms)
        url = fields.get("url")
        if self.hosts is not None and attempts and isinstance(url, str):
            self.hosts.add(url, elapsed_ms, size, kind, status)

    def _count(self, attempts: int, size: int, error_kind: str | None, status: int | None, elapsed_ms: float) -> None:
        self.records += 1
        self.attempts += attempts
        self.bytes_received += size
        outcome = outcome_of(error_kind, status)
        if outcome is Outcome.FAILED:
            self.errors[str(error_kind)] += 1
        elif outcome is Outcome.HTTP_ERROR:
            self.http_errors += 1
        else:
            self.ok += 1
        if attempts:
            self._latency[int(math.log(max(elapsed_ms, _FLOOR_MS) / _FLOOR_MS) / _GROWTH)] += 1

    def outcome_line(self) -> str:
        """``N ok, N HTTP >= 400, N errors (kind N, ...)``: the one way outcomes are told."""
        outcome = f"{self.ok:,} ok, {self.http_errors:,} HTTP >= 400, {self.failed:,} errors"
        if self.errors:
            outcome += " (" + ", ".join(f"{kind} {count:,}" for kind, count in self.errors.most_common()) + ")"
        return outcome

    @property
    def failed(self) -> int:
        """Records with an error (a status of 400 or more is not one)."""
        return sum(self.errors.values())

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def percentile(self, fraction: float) -> float | None:
        """Approximate latency (ms, within 2 %) below which ``fraction`` of the fetches fall."""
        total = sum(self._latency.values())
        if not total:
            return None
        rank = fraction * total
        seen = 0
        for bucket in sorted(self._latency):
            seen += self._latency[bucket]
            if seen >= rank:
                return _FLOOR_MS * math.exp((bucket + 0.5) * _GROWTH)
        return None

    def to_dict(self, *, interrupted: bool = False) -> dict[str, Any]:
        """The whole summary as one JSON-ready object (``--summary-json``)."""
        elapsed = self.elapsed
        out: dict[str, Any] = {
            "requests": self.records,
            "ok": self.ok,
            "http_errors": self.http_errors,
            "errors": self.failed,
            "errors_by_kind": dict(self.errors.most_common()),
            "attempts": self.attempts,
            "bytes": self.bytes_received,
            "elapsed_s": round(elapsed, 3),
            "rate_per_s": round(self.records / elapsed, 1) if elapsed > 0 else None,
            "interrupted": interrupted,
            "latency_ms": {f"p{round(q * 100)}": _round(self.percentile(q)) for q in _QUANTILES},
            "connections": {
                "opened": self.connections_opened,
                "reused": self.connections_reused,
                "tls_resumed": self.tls_resumed,
            },
        }
        table = self.hosts
        if table is not None:
            out["hosts"] = {
                "tracked": len(table.hosts),
                "dropped": table.dropped,
                "slowest": [host for host, _ in table.slowest()],
                "most_failing": [host for host, _ in table.most_failing()],
                "by_host": {host: stats.to_dict() for host, stats in table.hosts.items()},
            }
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
