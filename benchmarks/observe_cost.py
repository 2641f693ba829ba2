"""What the observability options cost: W1 (20,000 x /ok, -c 100, one host, keep-alive) with each on and off.

    python benchmarks/observe_cost.py                 # 5 interleaved repetitions of every variant
    python benchmarks/observe_cost.py --reps 3 -n 5000
    python benchmarks/observe_cost.py --variant default --variant "--timings"

Starts benchmarks/server.py (nginx when installed) pinned to the last CPU, runs the installed
``asyncfetch -c 100 -r 0 -q URLFILE [OPTIONS]`` pinned to the first (``--csv input`` reads the same
URLs as a CSV with an ``id`` column), records to /dev/null, and
reports the client's CPU seconds (user + system, ``wait4``) and wall time per variant: the
median over the repetitions, which run interleaved (every variant once, then again) so that a
noisy neighbour hurts all of them alike. CPU time is the figure to read on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import benchlib
from server import running_server

_VARIANTS = {
    "default": [],
    "--timings": ["--timings"],
    "--tls": ["--tls"],
    "--fields url,status,sha256": ["--fields", "url,status,sha256"],
    "--summary (per-host)": ["--summary"],
    "--csv input": ["--csv"],
    "all": ["--timings", "--tls", "--fields", "url,status,timings", "--summary"],
}
_TRIES = 3  # runs of one repetition before a failing variant ends the benchmark
# Variants that read the same requests as a CSV (url,id: one column carried into ``input``).
_CSV_INPUT = {"--csv input"}


def _write_csv(path: Path, lines: Path) -> None:
    """The URL list as a CSV with a header and one more column, the row number."""
    with lines.open(encoding="ascii") as source, path.open("w", encoding="ascii") as f:
        f.write("url,id\n")
        f.writelines(f"{line.rstrip()},{i}\n" for i, line in enumerate(source))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--urls", type=int, default=20_000)
    p.add_argument("-c", "--concurrency", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--variant", action="append", choices=sorted(_VARIANTS), help="variants to run (default: all)")
    p.add_argument("--port", type=int, default=8097)
    p.add_argument("--asyncfetch", help="the asyncfetch command (default: on PATH, else beside this Python)")
    args = p.parse_args()
    asyncfetch = benchlib.find_asyncfetch(args.asyncfetch)
    client_cpu, server_cpu = benchlib.default_cpus()
    names = args.variant or list(_VARIANTS)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    with running_server("auto", args.port, server_cpu) as server, tempfile.TemporaryDirectory() as scratch:
        urls = Path(scratch) / "urls.txt"
        benchlib.write_url_list(urls, server.url("/ok"), args.urls)
        table = Path(scratch) / "urls.csv"
        _write_csv(table, urls)
        for rep in range(args.reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                source = table if name in _CSV_INPUT else urls
                cmd = [asyncfetch, "-c", str(args.concurrency), "-r", "0", "-q", str(source), *_VARIANTS[name]]
                if "--summary" in cmd:
                    cmd.remove("-q")
                for attempt in range(1, _TRIES + 1):
                    benchlib.wait_quiet(3)
                    measured = benchlib.run_measured(benchlib.pinned(cmd, client_cpu), timeout=300, peak_rss=False)
                    if measured.returncode == 0:
                        break
                    # Exit 1: an error record (a timeout on a machine busy with other work); the
                    # figure would not be W1's, so that repetition is run again.
                    print(f"rep {rep + 1} {name}: exit status {measured.returncode}, run again", file=sys.stderr)
                    if measured.returncode != 1 or attempt == _TRIES:
                        sys.exit(f"{name}: exit status {measured.returncode}")
                cpu[name].append(measured.cpu_s)
                wall[name].append(measured.wall_s)
                print(
                    f"rep {rep + 1} {name}: CPU {measured.cpu_s:.2f} s, wall {measured.wall_s:.2f} s", file=sys.stderr
                )
    base = statistics.median(cpu[names[0]])
    rows = [
        [
            name,
            benchlib.med_range(cpu[name]),
            f"{(statistics.median(cpu[name]) / base - 1) * 100:+.1f} %",
            benchlib.med_range(wall[name]),
        ]
        for name in names
    ]
    print(f"W1: {args.urls:,} x /ok, -c {args.concurrency}, {args.reps} repetitions; {benchlib.machine_line()}")
    print(benchlib.markdown_table(["variant", "client CPU s", f"vs {names[0]}", "wall s"], rows))


if __name__ == "__main__":
    main()
