"""The process around a run: event loop, signals, open-file limit, output file, exit status.

:func:`run_loop` is shared by every command; :func:`execute` is the one-machine fetch:
input reader → :func:`asyncfetch.fetch` → JSON lines, with the progress bar and summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import os
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncfetch.cli.status import CommandError, ExitStatus, InputFailure, UsageError, outcome_status, warn
from asyncfetch.engine import fetch
from asyncfetch.errors import StateError
from asyncfetch.options import FetchOptions
from asyncfetch.sinks import LineWriter
from asyncfetch.source import Input, InputError, InputFormat, InputReader, estimate_total
from asyncfetch.stats import HostTable, RunStats
from asyncfetch.transport import MAX_IDLE
from asyncfetch.values import MutableValue, Value

if TYPE_CHECKING:
    from asyncfetch.resume import DoneSet

# File descriptors kept for everything that is not a connection (inputs, output, loop, DNS).
_FD_RESERVE = 64
_REFRESH_SECONDS = 0.25
_RESOLVER_THREADS = 32
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Plan(Value):
    """A validated command line: what to read, how to fetch, where records and reports go."""

    inputs: list[Input]
    options: FetchOptions
    output: Path | None
    resume: bool
    fail: bool
    progress: bool
    summary: bool
    warnings: bool = True
    # The command line as typed (without the program name): the summary of an interrupted
    # run shows the one that finishes the job.
    argv: tuple[str, ...] = ()
    # How INPUTs are read (None: by each name), and the CSV/TSV column holding the URL.
    input_format: InputFormat | None = None
    url_column: str | None = None
    summary_json: Path | None = None  # where the whole summary goes as JSON


@dataclass(slots=True, eq=False, repr=False)
class RunControl(MutableValue):
    """What a command's coroutine needs from the process: the stop signal and the exits."""

    stop: asyncio.Event
    loop: asyncio.AbstractEventLoop
    interrupted: bool = False
    before_exit: list[Callable[[], None]] = field(default_factory=list)

    def signalled(self, signum: int, frame: object) -> None:
        """SIGINT/SIGTERM: stop taking input and finish up; a second one exits at once.

        A plain ``signal.signal`` handler, not the loop's: it runs even while a write to a
        stalled stdout blocks the loop, so the second ^C always gets the user out.
        """
        del signum, frame
        if self.interrupted:  # a second ^C: the user means it
            self._exit(ExitStatus.INTERRUPTED)
        self.interrupted = True
        self.loop.call_soon_threadsafe(self.stop.set)

    def pipe_closed(self) -> None:
        """The reader of stdout is gone (``| head -1``): end at once, quietly."""
        self._exit(ExitStatus.PIPE_CLOSED)

    def _exit(self, status: ExitStatus) -> None:
        for hook in self.before_exit:
            hook()
        sys.stderr.flush()
        os._exit(status)


def _keep_freed_heap() -> None:
    """Ask glibc to keep up to 8 MB of freed heap instead of handing it back at once.

    By default it returns memory to the system whenever 128 KB lie free at the top of the heap,
    so every body of ~100 KB is mapped back in page by page: 4 times the page faults on a list
    of 100 KB files (32,000 against 7,000 for 2,000 bodies here). Peak memory does not change.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_TRIM_THRESHOLD, 8 * 1024 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc (musl has no mallopt): nothing to tune


def _collect_cycles_less_often() -> None:
    """Tune the cyclic garbage collector for a run: ~5 % less CPU per request over HTTPS.

    What was imported lives as long as the process: frozen, full collections no longer walk
    it. And a run allocates millions of short-lived objects (requests, futures, records) that
    reference counting frees; collecting the young generation every 10,000 allocations
    instead of 700 still finds the rare cycles (an exception and its traceback) soon enough.
    Measured with callgrind on 600 HTTPS hosts: 5.83 to 5.55 M instructions per request.
    The CLI's choice for its own process; the library leaves the collector as it finds it.
    The collector was off while the command started (:func:`asyncfetch.cli.main`): on from here.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    gc.enable()


def run_loop(main: Callable[[RunControl], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on uvloop (where installed) with SIGINT/SIGTERM setting its stop event."""
    _keep_freed_heap()
    _collect_cycles_less_often()
    # Name lookups run in threads (libuv's pool under uvloop, the default executor otherwise):
    # the default 4 to 6 of them would make DNS the bottleneck of a list across many hosts.
    os.environ.setdefault("UV_THREADPOOL_SIZE", str(_RESOLVER_THREADS))
    try:
        import uvloop
    except ImportError:  # uvloop is optional (no Windows build): asyncio's loop works too
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop

    async def with_signals() -> int:
        control = RunControl(asyncio.Event(), asyncio.get_running_loop())
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, control.signalled)
        return await main(control)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.get_loop().set_default_executor(ThreadPoolExecutor(_RESOLVER_THREADS, "asyncfetch-io"))
        return runner.run(with_signals())


def open_output(path: Path, *, append: bool) -> int:
    """The file descriptor records are written to: FILE appended to, or replaced."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)


def execute(plan: Plan) -> int:
    """Run the one-machine fetch to its end and return the exit status (or raise a CommandError)."""
    concurrency = claim_open_files(plan.options.concurrency, warnings=plan.warnings)
    options = replace(plan.options, concurrency=concurrency)
    done: DoneSet | None = None
    if plan.output is not None:
        try:
            if plan.resume:
                from asyncfetch.resume import scan_output

                done = scan_output(str(plan.output))
            out_fd = open_output(plan.output, append=plan.resume)
        except OSError as exc:
            raise UsageError(f"cannot write {plan.output}: {exc.strerror or exc}") from None
    elif sys.stdout is None:  # started with stdout closed (`>&-`)
        raise CommandError("cannot write records: standard output is closed")
    else:
        out_fd = sys.stdout.fileno()
    try:
        return run_loop(lambda control: _fetch(replace(plan, options=options), out_fd, done, control))
    finally:
        if plan.output is not None:
            os.close(out_fd)


async def _fetch(plan: Plan, out_fd: int, done: DoneSet | None, control: RunControl) -> int:
    # Per-host figures cost a little per record: kept only when a summary will show them.
    stats = RunStats(hosts=HostTable() if plan.summary or plan.summary_json is not None else None)
    reader = InputReader(plan.inputs, input_format=plan.input_format, url_column=plan.url_column)
    try:
        run = fetch(reader, options=plan.options, stop=control.stop, skip=done)
    except OSError as exc:  # --save DIR cannot be made
        raise UsageError(f"cannot use --save {plan.options.save_dir}: {exc.strerror or exc}") from None
    except StateError as exc:  # --state FILE in use by another run, or not ours
        raise UsageError(str(exc)) from None
    stop_display = _start_progress(plan, reader, run, stats) if plan.progress else None
    if stop_display is not None:
        control.before_exit.append(stop_display)
    writer = LineWriter(out_fd, on_closed=control.pipe_closed)
    try:
        async with run:
            async for record in run:
                writer.write(record.to_line())
                stats.add(record)
    except OSError as exc:
        raise CommandError(f"cannot write records: {exc.strerror or exc}") from None
    except StateError as exc:  # the state store failed midway (a write)
        raise CommandError(str(exc)) from None
    except InputError as exc:  # an INPUT that became unreadable midway
        raise InputFailure(str(exc)) from None
    finally:
        writer.flush()
        if stop_display is not None:
            stop_display()
    if writer.error is not None:
        raise CommandError(f"cannot write records: {writer.error.strerror or writer.error}")
    stats.connections_opened, stats.connections_reused = run.connections_opened, run.connections_reused
    stats.tls_resumed = run.tls_resumed
    if plan.summary:
        from asyncfetch.cli.display import Interruption, format_summary

        interruption = None
        if control.interrupted:
            read = run.requests_read
            interruption = Interruption(
                not_fetched=max(0, read - stats.records - run.skipped),
                unread=0 if reader.finished else _unread(plan.inputs, read),
                abandoned_attempts=run.attempts_started - stats.attempts,
                resume=resume_command(plan),
            )
        sys.stderr.write(format_summary(stats, interrupted=interruption))
        sys.stderr.flush()
    if plan.summary_json is not None:
        write_summary_json(plan.summary_json, stats, interrupted=control.interrupted)
    return outcome_status(
        failed=stats.failed, http_errors=stats.http_errors, fail=plan.fail, interrupted=control.interrupted
    )


def write_summary_json(path: Path, stats: RunStats, *, interrupted: bool) -> None:
    """The whole summary as one JSON object in FILE, replaced whole (never a half-written file)."""
    data = (json.dumps(stats.to_dict(interrupted=interrupted), ensure_ascii=False) + "\n").encode("utf-8")
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise CommandError(f"cannot write --summary-json {path}: {exc.strerror or exc}") from None


def _unread(inputs: list[Input], read: int) -> int | None:
    """Requests the INPUTs hold beyond the ``read`` taken so far, when that can be counted."""
    total = estimate_total(inputs)
    return None if total is None else max(0, total - read)


def resume_command(plan: Plan) -> str | None:
    """The command that finishes an interrupted run: this one with ``--resume`` (needs ``-o``)."""
    if plan.output is None or not plan.argv:
        return None
    import shlex

    args = list(plan.argv)
    if not plan.resume:
        args.insert(0, "--resume")
    return shlex.join(["asyncfetch", *args])


def _start_progress(plan: Plan, reader: InputReader, run: Any, stats: RunStats) -> Callable[[], None]:
    """Start the bar; returns the function that stops it (idempotent)."""
    from asyncfetch.cli.display import ProgressDisplay

    loop = asyncio.get_running_loop()
    estimate: list[int | None] = [None]
    display = ProgressDisplay(
        sys.stderr,
        stats,
        total=lambda: run.requests_read if reader.finished else estimate[0],
        completed=lambda: stats.records + run.skipped,
    )
    display.start()
    counting = loop.run_in_executor(None, estimate_total, plan.inputs)
    counting.add_done_callback(lambda f: estimate.__setitem__(0, None if f.cancelled() else f.result()))
    ticker: list[asyncio.TimerHandle] = []

    def tick() -> None:
        display.refresh()
        ticker[:] = [loop.call_later(_REFRESH_SECONDS, tick)]

    tick()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            for timer in ticker:
                timer.cancel()
            display.stop()

    return stop


def claim_open_files(concurrency: int, *, warnings: bool = True) -> int:
    """Raise the open-file limit as far as allowed; the concurrency it can carry (a warning if less)."""
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
    # Room beyond -c lets the pool keep idle connections to hosts with requests still to come
    # (transport.MAX_IDLE of them at most): asked for, never required.
    roomy = wanted + MAX_IDLE if hard == resource.RLIM_INFINITY else min(wanted + MAX_IDLE, hard)
    if soft != resource.RLIM_INFINITY and soft < roomy:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (roomy, hard))
    if available >= wanted:
        return concurrency
    carried = max(1, available - _FD_RESERVE)
    if warnings:
        warn(
            f"-c {concurrency} needs about {wanted} open files, but this process may have "
            f"{available} (ulimit -n): running {carried} requests at a time"
        )
    return carried
