"""One run of the command: input reader → :func:`asyncfetch.fetch` → JSON lines, with the
process-level duties around it: the open-file limit, signals, the progress bar, the
summary, and the exit status."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

from asyncfetch.engine import fetch
from asyncfetch.options import FetchOptions
from asyncfetch.resume import DoneSet, scan_output
from asyncfetch.sinks import LineWriter
from asyncfetch.source import LineReader, estimate_total
from asyncfetch.stats import RunStats

# File descriptors kept for everything that is not a connection (inputs, output, loop, DNS).
_FD_RESERVE = 64
_REFRESH_SECONDS = 0.25
_RESOLVER_THREADS = 32


class ExitStatus(IntEnum):
    """How the process ends; decided in :func:`exit_status` and the signal paths only."""

    OK = 0  # every request got an HTTP response (with --fail: every status < 400)
    FAILURES = 1  # at least one error record (with --fail: or a status >= 400)
    USAGE = 2  # bad options or unreadable INPUT: nothing fetched
    INTERRUPTED = 130  # 128 + SIGINT: stopped on SIGINT or SIGTERM
    PIPE_CLOSED = 141  # 128 + SIGPIPE: the reader of stdout went away


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated command line: what to read, how to fetch, where records and reports go."""

    inputs: list[str]
    options: FetchOptions
    output: Path | None
    resume: bool
    fail: bool
    progress: bool
    summary: bool


def exit_status(stats: RunStats, *, fail: bool) -> ExitStatus:
    """0 when every request got a response (and, with ``fail``, a status below 400), else 1."""
    if stats.failed or (fail and stats.http_errors):
        return ExitStatus.FAILURES
    return ExitStatus.OK


def execute(plan: Plan) -> int:
    """Run the plan to its end and return the exit status."""
    options = replace(plan.options, concurrency=_claim_open_files(plan.options.concurrency))
    done: DoneSet | None = None
    if plan.output is not None:
        try:
            if plan.resume:
                done = scan_output(str(plan.output))
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if plan.resume else os.O_TRUNC)
            out_fd = os.open(plan.output, flags, 0o644)
        except OSError as exc:
            sys.stderr.write(f"asyncfetch: error: cannot write {plan.output}: {exc.strerror or exc}\n")
            return ExitStatus.USAGE
    else:
        out_fd = sys.stdout.fileno()
    try:
        return _run_loop(_run(replace(plan, options=options), out_fd, done))
    finally:
        if plan.output is not None:
            os.close(out_fd)


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    # Name lookups run in threads (libuv's pool under uvloop, the default executor otherwise):
    # the default 4 to 6 of them would make DNS the bottleneck of a list across many hosts.
    os.environ.setdefault("UV_THREADPOOL_SIZE", str(_RESOLVER_THREADS))
    try:
        import uvloop
    except ImportError:  # uvloop is optional (no Windows build): asyncio's loop works too
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.get_loop().set_default_executor(ThreadPoolExecutor(_RESOLVER_THREADS, "asyncfetch-io"))
        return runner.run(main)


async def _run(plan: Plan, out_fd: int, done: DoneSet | None) -> int:
    loop = asyncio.get_running_loop()
    stats = RunStats()
    stop = asyncio.Event()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:  # a second ^C: the user means it
            os._exit(ExitStatus.INTERRUPTED)
        interrupted = True
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)

    reader = LineReader(plan.inputs)
    run = fetch(reader, options=plan.options, stop=stop, skip=done)
    display = None
    if plan.progress:
        from asyncfetch.cli.display import ProgressDisplay

        estimate: list[int | None] = [None]

        def total() -> int | None:
            return run.requests_read if reader.finished else estimate[0]

        def done_count() -> int:
            return stats.records + run.skipped

        display = ProgressDisplay(sys.stderr, stats, total, done_count)
        display.start()
        counting = loop.run_in_executor(None, estimate_total, plan.inputs)
        counting.add_done_callback(lambda f: estimate.__setitem__(0, None if f.cancelled() else f.result()))

        def tick() -> None:
            display.refresh()
            ticker[0] = loop.call_later(_REFRESH_SECONDS, tick)

        ticker = [loop.call_later(_REFRESH_SECONDS, tick)]

    def pipe_closed() -> None:
        if display is not None:
            display.stop()
        os._exit(ExitStatus.PIPE_CLOSED)  # stop at once, quietly: nobody reads what follows

    writer = LineWriter(out_fd, on_closed=pipe_closed)
    try:
        async with run:
            async for record in run:
                writer.write(record.to_line())
                stats.add(record)
    except OSError as exc:
        sys.stderr.write(f"asyncfetch: error: cannot write records: {exc.strerror or exc}\n")
        return ExitStatus.FAILURES
    finally:
        writer.flush()
        if display is not None:
            ticker[0].cancel()
            display.stop()
    if writer.error is not None:
        sys.stderr.write(f"asyncfetch: error: cannot write records: {writer.error.strerror or writer.error}\n")
        return ExitStatus.FAILURES
    if plan.summary:
        from asyncfetch.cli.display import format_summary

        sys.stderr.write(format_summary(stats, interrupted=interrupted))
        sys.stderr.flush()
    if interrupted:
        return ExitStatus.INTERRUPTED
    return exit_status(stats, fail=plan.fail)


def _claim_open_files(concurrency: int) -> int:
    """Raise the open-file limit as far as allowed; the concurrency it can carry, with a warning."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = concurrency + _FD_RESERVE
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (ValueError, OSError):
            pass
    available = soft if soft != resource.RLIM_INFINITY else wanted
    if available >= wanted:
        return concurrency
    carried = max(1, available - _FD_RESERVE)
    sys.stderr.write(
        f"asyncfetch: warning: -c {concurrency} needs about {wanted} open files, but this process may have "
        f"{available} (ulimit -n): running {carried} requests at a time\n"
    )
    return carried
