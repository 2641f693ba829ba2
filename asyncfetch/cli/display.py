"""What people watching a terminal see on stderr: the live progress bar and the closing summary.

Only the CLI imports this module (and so rich). The bar never touches stdout: rich's
``redirect_stdout`` would swap ``sys.stdout`` for a proxy that prints JSON lines onto the
terminal, so it is off, and records are written to the file descriptor anyway. It refreshes
a few times a second from the running totals, so its cost does not grow with the request rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

from asyncfetch.stats import RunStats
from asyncfetch.values import Value

# Below this width the bar itself goes: the numbers are what a narrow terminal keeps.
_BAR_MIN_WIDTH = 72


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed is not None else "-/s")


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = f"{int(task.total):,}" if task.total is not None else "?"
        return Text(f"{int(task.completed):,}/{total}", style="bold")


class _OutcomeColumn(ProgressColumn):
    """ok in green; HTTP >= 400 in yellow and errors in red only when there are any."""

    def render(self, task: Task) -> Text:
        fields = task.fields
        text = Text()
        text.append(f"{fields['ok']:,} ok", style="green")
        http, errors = fields["http"], fields["errors"]
        text.append(f" {http:,} ≥400", style="yellow" if http else "dim")
        text.append(f" {errors:,} err", style="bold red" if errors else "dim")
        return text


class ProgressDisplay:
    """The live bar: done/total, requests per second, ok and error counts, ETA."""

    def __init__(
        self, stream: IO[str], stats: RunStats, total: Callable[[], int | None], completed: Callable[[], int]
    ) -> None:
        self._stats = stats
        self._total = total
        self._completed = completed
        self._console = Console(file=stream, stderr=True)
        # The numbers never wrap or cut: the bar takes what width is left, and goes when too narrow.
        columns: list[ProgressColumn] = [
            _CountColumn(table_column=Column(no_wrap=True)),
            _RateColumn(table_column=Column(no_wrap=True)),
            _OutcomeColumn(table_column=Column(no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
        ]
        if self._console.width >= _BAR_MIN_WIDTH:
            columns.insert(0, BarColumn(bar_width=None))
        self._progress = Progress(
            *columns,
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


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Interruption(Value):
    """What an interrupted run left undone, for its summary."""

    not_fetched: int  # requests read that got no record
    unread: int | None  # requests still in the INPUTs (None: unknown, e.g. a pipe)
    abandoned_attempts: int  # attempts in flight when the run stopped
    resume: str | None  # the command that finishes the job, when there is one


def format_summary(stats: RunStats, *, interrupted: Interruption | None = None) -> str:
    """The closing summary: totals, outcomes, errors by kind, attempts, time, rate, latency, bytes, connections.

    An interrupted run also says what was left undone and how to finish it.
    """
    elapsed = stats.elapsed
    rate = stats.records / elapsed if elapsed > 0 else 0.0
    head = f"{stats.records:,} requests in {elapsed:.2f} s ({rate:,.0f}/s)"
    if interrupted is not None:
        head += ", interrupted"
    outcome = stats.outcome_line()
    latency = ", ".join(
        f"p{int(q * 100)} {_ms(stats.percentile(q))}" for q in (0.5, 0.95, 0.99) if stats.percentile(q) is not None
    )
    attempts = stats.attempts + (interrupted.abandoned_attempts if interrupted is not None else 0)
    lines = [
        f"asyncfetch: {head}",
        f"  {outcome}",
        f"  {attempts:,} attempts, {_bytes(stats.bytes_received)} received"
        + (f", latency {latency}" if latency else ""),
    ]
    if stats.connections_opened or stats.connections_reused:
        lines.append(
            f"  {stats.connections_opened:,} connection{'s' if stats.connections_opened != 1 else ''} opened"
            + (f" ({stats.tls_resumed:,} resumed a TLS session)" if stats.tls_resumed else "")
            + f", {stats.connections_reused:,} request{'s' if stats.connections_reused != 1 else ''} on a reused one"
        )
    lines += _host_lines(stats)
    if interrupted is not None:
        lines.append("  " + _undone(interrupted))
        if interrupted.resume is not None:
            lines.append(f"  to finish: {interrupted.resume}")
        else:
            lines.append("  to finish later, write records with -o FILE and run again with --resume")
    return "\n".join(lines) + "\n"


def _host_lines(stats: RunStats) -> list[str]:
    """The slowest hosts and the most failing ones (top 5 each), when per-host figures were kept."""
    table = stats.hosts
    if table is None or not table.hosts:
        return []
    lines = ["  slowest hosts (p95):"]
    for host, figures in table.slowest():
        lines.append(f"    {_ms(figures.percentile(0.95)):>9}  {host}  ({figures.records:,} requests)")
    failing = table.most_failing()
    if failing:
        lines.append("  most failing hosts:")
        for host, figures in failing:
            lines.append(
                f"    {figures.errors:>9,} errors, {figures.http_errors:,} HTTP >= 400  {host}"
                f"  ({figures.records:,} requests)"
            )
    if table.dropped:
        lines.append(
            f"  (per-host figures kept for {len(table.hosts):,} hosts; {table.dropped:,} quieter ones dropped)"
        )
    return lines


def _undone(interrupted: Interruption) -> str:
    if interrupted.unread is None:
        text = f"{interrupted.not_fetched:,} requests read but not fetched, and the rest of the input not read"
    else:
        text = f"{interrupted.not_fetched + interrupted.unread:,} requests not fetched"
    if interrupted.abandoned_attempts:
        text += f" ({interrupted.abandoned_attempts:,} were in flight)"
    return text


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
