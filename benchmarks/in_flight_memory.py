"""Peak memory with thousands of requests in flight (the shared bench's W4), and where it goes.

    python benchmarks/in_flight_memory.py                       # 10,000 x /sleep/1000 at -c 5000, 3 runs
    python benchmarks/in_flight_memory.py --asyncfetch A --asyncfetch B     # A and B interleaved
    python benchmarks/in_flight_memory.py --where               # and the lines holding memory at the peak

Starts the benchmark server (server.py; /sleep/MS needs nginx's echo module or the Python
server), writes N distinct ``/sleep/MS`` URLs and runs ``asyncfetch -c C -r 0 -q`` on them,
each command once per repetition, in turn. Reports peak RSS (GNU time's %M, as the shared
bench), wall and CPU, medians with min-max. Peak RSS hardly depends on the machine's load.

At -c 5000 the peak comes while the 5,000 first connections are being opened: every request
then holds its connect path (coroutine frames, the loop's create_connection state, two
deadlines) on top of what it holds while it waits for its answer, and what pymalloc takes at
that moment it keeps for the rest of the run.

``--where`` then runs the first command's interpreter with tracemalloc twice: once for the
peak of Python's traced memory, once more to snapshot it when the traced memory first reaches
98 % of that peak, and prints the source lines that hold the most (tracemalloc counts Python's
allocations only: the loop's and the parser's C structures are outside it). Under tracemalloc
a run is several times slower; the memory it finds is the same.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib
from server import running_server

# Run inside the measured interpreter: the asyncfetch CLI under tracemalloc. With a threshold
# (argv[1] > 0), a thread snapshots the traced memory the first time it reaches the threshold;
# the CLI ends with os._exit, which waits for that report to be written.
_TRACER = r"""
import linecache, os, sys, threading, time, tracemalloc
at, top, args = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
tracemalloc.start()
fired, written = threading.Event(), threading.Event()
def report():
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = snapshot.statistics("lineno")
    print(f"traced at the snapshot: {sum(s.size for s in stats) / 1e6:.1f} MB", file=sys.stderr)
    for s in stats[:top]:
        frame = s.traceback[0]
        where = frame.filename.split("site-packages/")[-1] + f":{frame.lineno}"
        line = linecache.getline(frame.filename, frame.lineno).strip()[:80]
        print(f"{s.size / 1e6:7.2f} MB {s.count:8d}  {where}  {line}", file=sys.stderr)
def watch():
    while tracemalloc.get_traced_memory()[0] < at:
        time.sleep(0.002)
    fired.set()
    report()
    written.set()
if at > 0:
    threading.Thread(target=watch, daemon=True).start()
real_exit = os._exit
def _exit(code):
    if fired.is_set():
        written.wait()
    print(f"traced peak: {tracemalloc.get_traced_memory()[1]}", file=sys.stderr)
    sys.stderr.flush()
    real_exit(code)
os._exit = _exit
from asyncfetch.cli import main
sys.argv = ["asyncfetch", *args]
main()
"""


def interpreter_of(command: str) -> str:
    """The Python that runs an installed ``asyncfetch`` script (its ``#!`` line)."""
    with open(command, "rb") as f:
        first = f.readline().decode("utf-8", "replace").strip()
    if not first.startswith("#!") or "python" not in first:
        sys.exit(f"benchmarks: {command} is not a Python script; --where needs one")
    return first[2:].strip()


def run_traced(python: str, args: list[str], at_bytes: float, top: int, timeout: float, cwd: Path) -> tuple[int, str]:
    """One traced run: (traced peak in bytes, the report it printed).

    In ``cwd``, not here: ``python -c`` imports from its working directory first, and from a
    checkout that is the checkout's asyncfetch, not the command's.
    """
    proc = subprocess.run(
        [python, "-c", _TRACER, str(at_bytes), str(top), *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=benchlib.child_env(),
        timeout=timeout,
        check=False,
    )
    text = proc.stderr.decode("utf-8", "replace")
    peaks = [line for line in text.splitlines() if line.startswith("traced peak: ")]
    if not peaks:
        sys.exit(f"benchmarks: the traced run printed no peak (exit {proc.returncode}):\n{text[-2000:]}")
    report = "\n".join(line for line in text.splitlines() if not line.startswith("traced peak: "))
    return int(peaks[-1].split(": ")[1]), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--urls", type=int, default=10_000, help="URLs (default 10,000)")
    parser.add_argument("-c", "--concurrency", type=int, default=5000, help="asyncfetch -c (default 5,000)")
    parser.add_argument("--sleep-ms", type=int, default=1000, help="each answer's delay (default 1,000 ms)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--asyncfetch", action="append", default=[], help="asyncfetch command (repeat to compare, interleaved)"
    )
    parser.add_argument("--where", action="store_true", help="tracemalloc's lines at the peak (first command)")
    parser.add_argument("--top", type=int, default=30, help="lines --where prints (default 30)")
    parser.add_argument("--port", type=int, default=benchlib.DEFAULT_PORT)
    parser.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    args = parser.parse_args()

    commands = args.asyncfetch or [benchlib.find_asyncfetch(None)]
    client_cpu, server_cpu = benchlib.default_cpus()
    if benchlib.raise_open_files() < args.concurrency + 200:
        print(f"warning: the open-file limit is low for -c {args.concurrency}", file=sys.stderr)
    timeout = 120 + 3 * args.urls * args.sleep_ms / 1000 / args.concurrency
    rows: dict[str, list[benchlib.Measured]] = {c: [] for c in commands}
    short: list[str] = []
    with (
        running_server(args.server, args.port, server_cpu, need_sleep=True) as server,
        tempfile.TemporaryDirectory(prefix="asyncfetch-inflight-") as scratch,
    ):
        urls, out = Path(scratch) / "urls.txt", Path(scratch) / "out.jsonl"
        benchlib.write_url_list(urls, server.url(f"/sleep/{args.sleep_ms}"), args.urls)
        fetch_args = ["-c", str(args.concurrency), "-r", "0", "-q", str(urls)]
        print(f"# {benchlib.stamp()}: {args.urls:,} x /sleep/{args.sleep_ms} at -c {args.concurrency} ({server.kind})")
        for rep in range(args.reps):
            for command in commands:
                with out.open("wb") as sink:
                    m = benchlib.run_measured(
                        benchlib.pinned([command, *fetch_args], client_cpu), timeout=timeout, stdout=sink
                    )
                ok = benchlib.count_status(out)
                rows[command].append(m)
                if ok != args.urls or m.returncode != 0:
                    short.append(f"{command} rep {rep + 1}: {ok}/{args.urls} x 200, exit {m.returncode}")
                print(
                    f"  rep {rep + 1} {command}: {m.rss_mb:.1f} MB, {m.wall_s:.2f} s, CPU {m.cpu_s:.2f} s, {ok} x 200"
                )
        table = [
            [
                command,
                benchlib.med_range([m.rss_mb for m in measured], "{:.1f}"),
                benchlib.med_range([m.wall_s for m in measured]),
                benchlib.med_range([m.cpu_s for m in measured]),
            ]
            for command, measured in rows.items()
        ]
        print()
        print(benchlib.markdown_table(["asyncfetch", "peak RSS MB", "wall s", "CPU s"], table))
        for line in short:
            print(f"short: {line}")
        if args.where:
            python = interpreter_of(commands[0])
            peak, _ = run_traced(python, fetch_args, 0, args.top, 10 * timeout, Path(scratch))
            _, report = run_traced(python, fetch_args, 0.98 * peak, args.top, 10 * timeout, Path(scratch))
            print(f"\n## Where the traced memory is at its peak ({peak / 1e6:.1f} MB traced), {commands[0]}\n")
            print(report)
    if short:
        sys.exit(1)


if __name__ == "__main__":
    main()
