"""What people watching a terminal see on stderr: the live progress bar and the closing summary.

Only the CLI imports this module (and so rich). The bar never touches stdout: rich's
``redirect_stdout`` would swap ``sys.stdout`` for a proxy that prints JSON lines onto the
terminal, so it is off, and records are written to the file descriptor anyway. It refreshes
a few times a second from the running totals, so its cost does not grow with the request rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from asyncfetch.stats import RunStats

_OUTCOMES = "[green]{task.fields[ok]:,} ok[/] [yellow]{task.fields[http]:,} ≥400[/] [red]{task.fields[errors]:,} err[/]"


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed is not None else "-/s", style="progress.data.speed")


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = f"{int(task.total):,}" if task.total is not None else "?"
        return Text(f"{int(task.completed):,}/{total}", style="progress.download")


class ProgressDisplay:
    """The live bar: done/total, requests per second, ok and error counts, ETA."""

    def __init__(
        self, stream: IO[str], stats: RunStats, total: Callable[[], int | None], completed: Callable[[], int]
    ) -> None:
        self._stats = stats
        self._total = total
        self._completed = completed
        self._console = Console(file=stream, stderr=True)
        self._progress = Progress(
            TextColumn("[bold]asyncfetch"),
            BarColumn(),
            _CountColumn(),
            _RateColumn(),
            TextColumn(_OUTCOMES),
            TimeRemainingColumn(),
            console=self._console,
            redirect_stdout=False,
            redirect_stderr=False,
            refresh_per_second=4,
            transient=False,
        )
        self._task = self._progress.add_task("fetch", total=None, ok=0, http=0, errors=0)

    def start(self) -> None:
        self._progress.start()

    def refresh(self) -> None:
        """Copy the running totals into the bar (the bar redraws on its own clock)."""
        stats = self._stats
        self._progress.update(
            self._task,
            completed=self._completed(),
            total=self._total(),
            ok=stats.ok,
            http=stats.http_errors,
            errors=stats.failed,
        )

    def stop(self) -> None:
        self.refresh()
        self._progress.stop()


def format_summary(stats: RunStats, *, interrupted: bool = False) -> str:
    """The closing summary: totals, outcomes, errors by kind, attempts, time, rate, latency, bytes."""
    elapsed = stats.elapsed
    rate = stats.records / elapsed if elapsed > 0 else 0.0
    head = f"{stats.records:,} requests in {elapsed:.2f} s ({rate:,.0f}/s)"
    if interrupted:
        head += ", interrupted"
    outcome = f"{stats.ok:,} ok, {stats.http_errors:,} HTTP >= 400, {stats.failed:,} errors"
    if stats.errors:
        outcome += " (" + ", ".join(f"{kind} {count:,}" for kind, count in stats.errors.most_common()) + ")"
    latency = ", ".join(
        f"p{int(q * 100)} {_ms(stats.percentile(q))}" for q in (0.5, 0.95, 0.99) if stats.percentile(q) is not None
    )
    lines = [
        f"asyncfetch: {head}",
        f"  {outcome}",
        f"  {stats.attempts:,} attempts, {_bytes(stats.bytes_received)} received"
        + (f", latency {latency}" if latency else ""),
    ]
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{count} B"
