"""Running totals over records, for the progress bar, the summary and the exit status."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from asyncfetch.record import Record

# Latency histogram: buckets 2 % wide on a log scale, from 0.01 ms to ~hours: fixed memory.
_GROWTH = math.log(1.02)
_FLOOR_MS = 0.01


@dataclass(slots=True)
class RunStats:
    """Counts by outcome, attempts, bytes and a latency histogram, updated per record."""

    started: float = field(default_factory=time.monotonic)
    records: int = 0
    ok: int = 0
    http_errors: int = 0  # status >= 400, no error
    errors: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    bytes_received: int = 0
    _latency: Counter[int] = field(default_factory=Counter)

    def add(self, record: Record) -> None:
        """Count one record."""
        kind = record.error.kind.value if record.error is not None else None
        self._count(record.attempts, record.size, kind, record.status, record.elapsed_ms)

    def note_json(self, line: bytes) -> None:
        """Count a record known only as its JSON line (records collected from a queue)."""
        fields = json.loads(line)
        error = fields.get("error") or {}
        self._count(
            fields.get("attempts", 0),
            fields.get("size", 0),
            error.get("kind"),
            fields.get("status"),
            fields.get("elapsed_ms", 0.0),
        )

    def _count(self, attempts: int, size: int, error_kind: str | None, status: int | None, elapsed_ms: float) -> None:
        self.records += 1
        self.attempts += attempts
        self.bytes_received += size
        if error_kind is not None:
            self.errors[error_kind] += 1
        elif status is not None and status >= 400:
            self.http_errors += 1
        else:
            self.ok += 1
        if attempts:
            self._latency[int(math.log(max(elapsed_ms, _FLOOR_MS) / _FLOOR_MS) / _GROWTH)] += 1

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
