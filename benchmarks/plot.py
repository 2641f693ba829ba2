"""Time against number of URLs: sequential, threads and asyncfetch, drawn to a PNG.

    python benchmarks/plot.py                       # N = 10, 100, 1000, 5000 against /sleep/50
    python benchmarks/plot.py --sizes 10 100 1000 --reps 3
    python benchmarks/plot.py --no-plot             # the table only (no matplotlib needed)

Every URL answers after a fixed delay (/sleep/50: 50 ms), so latency dominates, as on the
internet. Three ways to fetch N distinct URLs, each a fresh process (start-up included), the
client pinned to one CPU like in compare.py:

  sequential   one requests.Session (or httpx.Client), one request after the other
               (benchmarks/sync_peers.py sequential): ~ N x 50 ms
  threads      ThreadPoolExecutor(C), a client per thread (sync_peers.py threads)
  asyncfetch   asyncfetch -c C -r 0 -q

Writes benchmarks/time_vs_urls.png (log-log, with the ideal times dashed) and the figures to
benchmarks/results/. Needs matplotlib for the PNG: pip install matplotlib (or the bench extra).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import benchlib
from server import running_server
from sync_peers import default_lib

METHODS = ("sequential", "threads", "asyncfetch")


def command(method: str, urlfile: Path, args: argparse.Namespace, asyncfetch: str) -> list[str]:
    peers = str(benchlib.BENCH_DIR / "sync_peers.py")
    lib = ["--lib", args.lib] if args.lib else []
    if method == "sequential":
        return [sys.executable, peers, "sequential", str(urlfile), *lib]
    if method == "threads":
        return [sys.executable, peers, "threads", str(urlfile), str(args.concurrency), *lib]
    return [asyncfetch, "-c", str(args.concurrency), "-r", "0", "-q", str(urlfile)]


def ideal(method: str, n: int, args: argparse.Namespace) -> float:
    """Seconds of waiting alone: N sleeps one after the other, or N/C rounds of one sleep."""
    per_request: float = args.sleep_ms / 1000
    return n * per_request if method == "sequential" else math.ceil(n / args.concurrency) * per_request


def draw(results: dict[str, dict[int, list[float]]], sizes: Sequence[int], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    colours = {"sequential": "tab:red", "threads": "tab:orange", "asyncfetch": "tab:blue"}
    labels = {
        "sequential": f"sequential ({args.lib_name}, one at a time)",
        "threads": f"threads (ThreadPoolExecutor({args.concurrency}), {args.lib_name})",
        "asyncfetch": f"asyncfetch -c {args.concurrency}",
    }
    for method in METHODS:
        points = sorted((n, statistics.median(ts)) for n, ts in results[method].items() if ts)
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", color=colours[method], label=labels[method])
        offset = {"sequential": (8, -4), "threads": (8, 4), "asyncfetch": (8, -12)}[method]
        for x, y in points:
            text = f"{y:.2f} s" if y < 10 else f"{y:.0f} s"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=8, color=colours[method])
    low, high = min(sizes), max(sizes)
    dense = sorted({*sizes, *(round(low * (high / low) ** (i / 200)) for i in range(201))})
    ax.plot(dense, [ideal("sequential", n, args) for n in dense], "--", color="tab:red", alpha=0.4, label="N x latency")
    ax.plot(
        dense,
        [ideal("threads", n, args) for n in dense],
        "--",
        color="tab:gray",
        alpha=0.5,
        label=f"ceil(N / {args.concurrency}) x latency",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("URLs fetched (N)")
    ax.set_ylabel("wall time, process start to exit (s)")
    ax.set_xlim(low / 1.5, high * 2.5)
    ax.set_title(f"Time against number of URLs: every response takes {args.sleep_ms} ms (local server)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png)
    plt.close(fig)


def read_csv(path: Path) -> dict[str, dict[int, list[float]]]:
    """The results of an earlier run, from the CSV it wrote."""
    results: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
    for line in path.read_text().splitlines()[1:]:
        method, n, wall = line.split(",")
        results[method].setdefault(int(n), []).append(float(wall))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    client_cpu, server_cpu = benchlib.default_cpus()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 5000])
    p.add_argument("--sleep-ms", type=int, default=50, help="server delay per response (default 50)")
    p.add_argument("-c", "--concurrency", type=int, default=100, help="threads, and asyncfetch -c (default 100)")
    p.add_argument("--reps", type=int, default=1, help="runs per point; the median is plotted")
    p.add_argument("--max-sequential", type=int, default=None, help="skip sequential runs above N URLs")
    p.add_argument("--lib", choices=("requests", "httpx", "urllib"), help="client of sequential and threads")
    p.add_argument("--png", type=Path, default=benchlib.BENCH_DIR / "time_vs_urls.png")
    p.add_argument("--no-plot", action="store_true", help="print the figures only (no matplotlib needed)")
    p.add_argument("--replot", type=Path, metavar="CSV", help="draw the PNG from an earlier run's CSV, measure nothing")
    p.add_argument("--port", type=int, default=benchlib.DEFAULT_PORT)
    p.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument("--client-cpu", type=int, default=client_cpu)
    p.add_argument("--server-cpu", type=int, default=server_cpu)
    p.add_argument("--quiet-max", type=float, default=20, help="longest wait for an idle machine before a run (s)")
    p.add_argument("--asyncfetch", help="the asyncfetch command (default: on PATH, else beside this Python)")
    args = p.parse_args(argv)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit(
                "plot.py: matplotlib is not installed, so benchmarks/time_vs_urls.png cannot be drawn.\n"
                "Install it (pip install matplotlib, or pip install -e '.[bench]' where the extra exists),\n"
                "or run with --no-plot to measure and print the table only."
            )
    args.lib_name = args.lib or default_lib()
    if args.replot:
        earlier = read_csv(args.replot)
        draw(earlier, sorted({n for per_n in earlier.values() for n in per_n}), args)
        print(f"wrote {args.png} from {args.replot}")
        return
    asyncfetch = benchlib.find_asyncfetch(args.asyncfetch)
    benchlib.raise_open_files()
    results: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
    notes: list[str] = []
    scratch = Path(tempfile.mkdtemp(prefix="asyncfetch-plot-"))
    try:
        with running_server(args.server, args.port, args.server_cpu, need_sleep=True) as server:
            print(f"{server.kind} server on {server.base}; client CPU {args.client_cpu}", file=sys.stderr)
            for n in sorted(args.sizes):
                urlfile = scratch / f"{n}.urls"
                benchlib.write_url_list(urlfile, server.url(f"/sleep/{args.sleep_ms}"), n)
                for rep in range(args.reps):
                    for method in METHODS:
                        if method == "sequential" and args.max_sequential is not None and n > args.max_sequential:
                            continue
                        benchlib.wait_quiet(args.quiet_max)
                        out = scratch / "out.jsonl"
                        with out.open("wb") as sink:
                            m = benchlib.run_measured(
                                benchlib.pinned(command(method, urlfile, args, asyncfetch), args.client_cpu),
                                timeout=ideal(method, n, args) * 5 + 120,
                                stdout=sink,
                                peak_rss=False,
                            )
                        ok = benchlib.count_status(out)
                        print(
                            f"N={n:<6} {method:<10} rep {rep + 1}: {m.wall_s:8.2f} s  ok={ok}/{n}  rc={m.returncode}"
                            + ("  TIMEOUT" if m.timed_out else ""),
                            file=sys.stderr,
                        )
                        if ok != n or m.timed_out:
                            notes.append(f"N={n} {method} rep {rep + 1}: {ok}/{n} ok, exit {m.returncode}")
                        if not m.timed_out:
                            results[method].setdefault(n, []).append(m.wall_s)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    header = ["N", *(f"{m} s" for m in METHODS), "ideal sequential s", f"ideal at C={args.concurrency} s"]
    rows = [
        [
            f"{n:,}",
            *(benchlib.med_range(results[m][n]) if results[m].get(n) else "-" for m in METHODS),
            f"{ideal('sequential', n, args):.2f}",
            f"{ideal('threads', n, args):.2f}",
        ]
        for n in sorted(args.sizes)
    ]
    table = benchlib.markdown_table(header, rows)
    print(
        f"\nTime against number of URLs (/sleep/{args.sleep_ms}, C={args.concurrency}, client {args.lib_name}, "
        f"median of {args.reps}, process start to exit):\n\n{table}"
    )
    for note in notes:
        print(f"- {note}")
    benchlib.RESULTS_DIR.mkdir(exist_ok=True)
    csv = benchlib.RESULTS_DIR / f"time_vs_urls-{benchlib.stamp()}.csv"
    csv.write_text(
        "method,urls,wall_s\n"
        + "".join(f"{m},{n},{t:.4f}\n" for m in METHODS for n, ts in sorted(results[m].items()) for t in ts)
    )
    print(f"\nwrote {csv}")
    if not args.no_plot:
        draw(results, sorted(args.sizes), args)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
