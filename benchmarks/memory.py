"""Peak memory of asyncfetch against the length of its input.

    python benchmarks/memory.py                          # 10,000,000 lines
    python benchmarks/memory.py -n 200000 -n 1000000     # several sizes, one run each
    python benchmarks/memory.py -n 200000 --count        # also count the records asyncfetch wrote
    python benchmarks/memory.py --csv                    # 10,000,000 CSV rows (asyncfetch --csv)

Feeds N request lines through a pipe to ``asyncfetch -r 0 -q`` (generated on the fly, never
written to a file) and reports the peak RSS of the asyncfetch process (``wait4``), its RSS as
the input goes by, and the wall time. Records go to /dev/null (with --count, to a pipe whose
reader counts them by error kind).

The lines have to be cheap, so that 10 million of them take minutes and no big server:
  * most are ``ftp://invalid.test/I``: asyncfetch rejects the scheme at once and writes an
    ``invalid_url`` record (no DNS, no socket). They exercise input, parsing, indexing, records
    and output at full speed;
  * one line in K (--refused-every, default 10) is ``http://127.0.0.1:PORT/refused?i=I`` where PORT
    is a socket this script holds bound but not listening: the kernel refuses the connection at
    once (``connect`` record). They take the whole request path (scheduler, worker, pool, error
    classification, retry decision, latency statistics), so per-request state that is never
    freed shows up too.
With --csv the same requests are CSV rows (``url,name,note``; the name quoted, with a comma in
it, and the note a quoted field with an embedded newline one row in 100) read by ``asyncfetch
--csv``: the rows' other columns travel with each request into its record.
Every line is distinct (the index is in it). asyncfetch's input look-ahead, its in-flight
requests and its statistics are bounded, so peak RSS should not grow with N.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import benchlib

GOAL_LINES, GOAL_MB = 200_000, 150.0


@dataclass
class Progress:
    """Shared between the feeding, sampling and counting threads."""

    fed: int = 0  # lines written into the pipe
    feed_error: str = ""
    samples: list[tuple[int, float]] = field(default_factory=list)  # (lines fed, RSS MB)
    records: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Result:
    lines: int
    refused: int
    wall_s: float
    cpu_s: float
    peak_mb: float
    returncode: int
    timed_out: bool
    progress: Progress


def closed_port() -> socket.socket:
    """A TCP socket bound to a free 127.0.0.1 port and not listening: connections to it are
    refused by the kernel at once, and no other process can take the port while we hold it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def csv_batches(n: int, refused_every: int, port: int, size: int = 10_000) -> Iterator[tuple[int, bytes]]:
    """(row count, bytes) batches of a CSV of N rows (after its header)."""
    refused = f"http://127.0.0.1:{port}/refused?i="
    yield 0, b"url,name,note\r\n"
    for start in range(0, n, size):
        stop = min(n, start + size)
        rows = []
        for i in range(start, stop):
            url = f"{refused}{i}" if refused_every and i % refused_every == 0 else f"ftp://invalid.test/{i}"
            note = '"two\r\nlines"' if i % 100 == 0 else "plain"
            rows.append(f'{url},"row {i}, quoted",{note}\r\n')
        yield stop - start, "".join(rows).encode()


def batches(n: int, refused_every: int, port: int, size: int = 10_000) -> Iterator[tuple[int, bytes]]:
    """(line count, bytes) batches of the N input lines."""
    refused = f"http://127.0.0.1:{port}/refused?i="
    for start in range(0, n, size):
        stop = min(n, start + size)
        if refused_every:
            text = "".join(
                f"{refused}{i}\n" if i % refused_every == 0 else f"ftp://invalid.test/{i}\n" for i in range(start, stop)
            )
        else:
            text = "".join(f"ftp://invalid.test/{i}\n" for i in range(start, stop))
        yield stop - start, text.encode()


def feed(
    proc: subprocess.Popen[bytes], n: int, refused_every: int, port: int, progress: Progress, *, as_csv: bool = False
) -> None:
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    try:
        for count, data in (csv_batches if as_csv else batches)(n, refused_every, port):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            progress.fed += count
    except OSError as exc:  # asyncfetch exited early: the run's exit status tells why
        progress.feed_error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def sample(target: Callable[[], int | None], progress: Progress, stop: threading.Event) -> None:
    """RSS of asyncfetch itself (not of the middleman measuring it) every quarter second."""
    pid = None
    while not stop.wait(0.25):
        pid = pid or target()
        rss = benchlib.rss_mb_now(pid) if pid else None
        if rss is not None:
            progress.samples.append((progress.fed, rss))


def count(proc: subprocess.Popen[bytes], progress: Progress) -> None:
    """Count the records asyncfetch writes, by error kind (a substring count per chunk)."""
    assert proc.stdout is not None
    tail = b""
    kinds = {"invalid_url": 0, "connect": 0}
    fd = proc.stdout.fileno()
    while chunk := os.read(fd, 1 << 20):
        data = tail + chunk
        cut = data.rfind(b"\n") + 1
        whole, tail = data[:cut], data[cut:]
        progress.records += whole.count(b"\n")
        for kind in kinds:
            kinds[kind] += whole.count(b'"kind":"' + kind.encode() + b'"')
    progress.kinds = kinds


def run(asyncfetch: str, n: int, args: argparse.Namespace) -> Result:
    progress = Progress()
    port_socket = closed_port()
    port = port_socket.getsockname()[1]
    # --max-host-errors 0: every refused request takes the whole request path (the breaker
    # would otherwise end the rest of them at once after the first 50 on the one host).
    cmd = [asyncfetch, "-r", "0", "-q", "--max-host-errors", "0"] + (["--csv"] if args.csv else [])
    if args.concurrency:
        cmd += ["-c", str(args.concurrency)]
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(proc: subprocess.Popen[bytes], target: Callable[[], int | None]) -> None:
        threads.append(
            threading.Thread(
                target=feed,
                args=(proc, n, args.refused_every, port, progress),
                kwargs={"as_csv": args.csv},
                daemon=True,
            )
        )
        threads.append(threading.Thread(target=sample, args=(target, progress, stop), daemon=True))
        if args.count:
            threads.append(threading.Thread(target=count, args=(proc, progress), daemon=True))
        for thread in threads:
            thread.start()

    try:
        m = benchlib.run_measured(
            benchlib.pinned(cmd, args.cpu),
            timeout=args.timeout,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if args.count else subprocess.DEVNULL,
            stderr=None,  # asyncfetch's own complaints, if any, go to our stderr
            on_start=start,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        port_socket.close()
    refused = (n + args.refused_every - 1) // args.refused_every if args.refused_every else 0
    return Result(n, refused, m.wall_s, m.cpu_s, m.rss_mb, m.returncode, m.timed_out, progress)


def rss_at(progress: Progress, fraction: float, n: int) -> str:
    """RSS sampled when ``fraction`` of the input had been fed."""
    for fed, rss in progress.samples:
        if fed >= fraction * n:
            return f"{rss:.0f}"
    return "-"


def report(results: Sequence[Result], args: argparse.Namespace) -> str:
    header = ["lines", "refused requests", "wall s", "lines/s", "CPU s", "peak RSS MB", "RSS MB at 25/50/75/100% fed"]
    if args.count:
        header.append("records (invalid_url + connect)")
    header.append("exit")
    rows = []
    for r in results:
        row = [
            f"{r.lines:,}",
            f"{r.refused:,}",
            f"{r.wall_s:.1f}",
            f"{r.lines / r.wall_s:,.0f}",
            f"{r.cpu_s:.1f}",
            f"{r.peak_mb:.1f}",
            " / ".join(rss_at(r.progress, f, r.lines) for f in (0.25, 0.5, 0.75, 1.0)),
        ]
        if args.count:
            kinds = r.progress.kinds
            row.append(f"{r.progress.records:,} ({kinds.get('invalid_url', 0):,} + {kinds.get('connect', 0):,})")
        row.append(("killed (timeout)" if r.timed_out else str(r.returncode)) + (" !" if r.progress.feed_error else ""))
        rows.append(row)
    lines = [benchlib.markdown_table(header, rows), ""]
    for r in results:
        problems = []
        if r.timed_out:
            problems.append(f"killed after {args.timeout:.0f} s")
        elif r.returncode != 1:  # every record is an error: 1 is the expected exit status
            problems.append(f"exit status {r.returncode} (expected 1: every record is an error)")
        if r.progress.feed_error:
            problems.append(f"stopped reading its input after {r.progress.fed:,} lines ({r.progress.feed_error})")
        if args.count and r.progress.records != r.lines:
            problems.append(f"wrote {r.progress.records:,} records for {r.lines:,} lines")
        if args.count and r.progress.kinds.get("connect", 0) != r.refused:
            problems.append(f"{r.progress.kinds.get('connect', 0):,} connect errors for {r.refused:,} refused requests")
        if problems:
            lines.append(f"- PROBLEM with {r.lines:,} lines: " + "; ".join(problems))
        if r.lines == GOAL_LINES:
            verdict = "met" if r.peak_mb < GOAL_MB else "NOT met"
            lines.append(f"- goal {GOAL_LINES:,} lines under {GOAL_MB:.0f} MB: {verdict} ({r.peak_mb:.1f} MB)")
    done = [r for r in results if not r.timed_out]
    if len({r.lines for r in done}) > 1:
        small = min(done, key=lambda r: r.lines)
        large = max(done, key=lambda r: r.lines)
        growth = large.peak_mb / small.peak_mb
        lines.append(
            f"- peak RSS from {small.lines:,} to {large.lines:,} lines ({large.lines / small.lines:.0f}x the input): "
            f"{small.peak_mb:.1f} -> {large.peak_mb:.1f} MB ({growth:.2f}x): "
            + ("flat" if growth <= 1.2 else "GROWS with the input")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--lines", type=int, action="append", help="input lines (repeatable; default 10,000,000)")
    p.add_argument("--refused-every", type=int, default=10, metavar="K", help="one line in K is a refused request")
    p.add_argument("-c", "--concurrency", type=int, help="asyncfetch -c (default: asyncfetch's own)")
    p.add_argument("--count", action="store_true", help="count the records through a pipe instead of /dev/null")
    p.add_argument("--csv", action="store_true", help="feed CSV rows to asyncfetch --csv instead of URL lines")
    p.add_argument("--cpu", type=int, default=benchlib.default_cpus()[0], help="CPU to pin asyncfetch to")
    p.add_argument("--timeout", type=float, default=3600, help="kill a run after this many seconds")
    p.add_argument("--asyncfetch", help="the asyncfetch command (default: on PATH, else beside this Python)")
    args = p.parse_args(argv)
    sizes = args.lines or [10_000_000]
    asyncfetch = benchlib.find_asyncfetch(args.asyncfetch)
    benchlib.raise_open_files()
    print(
        f"{benchlib.machine_line()}; asyncfetch {asyncfetch}"
        + (f" pinned to CPU {args.cpu}" if args.cpu is not None else "")
        + f"; one line in {args.refused_every} refused, the rest invalid_url"
        + ("; CSV rows (--csv)" if args.csv else "")
        + f"; peak RSS: {benchlib.rss_method()}",
        file=sys.stderr,
    )
    results = []
    for n in sizes:
        t0 = time.strftime("%H:%M:%S")
        print(f"{t0} feeding {n:,} lines ...", file=sys.stderr)
        r = run(asyncfetch, n, args)
        print(f"    {r.wall_s:.1f} s, peak RSS {r.peak_mb:.1f} MB, exit {r.returncode}", file=sys.stderr)
        results.append(r)
    print(report(results, args))


if __name__ == "__main__":
    main()
