"""asyncfetch beside curl --parallel and the naive httpx pattern, on a local server.

    python benchmarks/compare.py                       # W1 W2 W3, 3 repetitions, then start-up
    python benchmarks/compare.py -w W3 --reps 1        # a quick look
    python benchmarks/compare.py --startup-only
    python benchmarks/compare.py --help

Starts the benchmark server (benchmarks/server.py: nginx when installed, else a pure-Python
one) on 127.0.0.1, pinned to the last CPU; every client runs pinned to the first CPU (taskset,
when there are 2+ CPUs), so a client's wall time is bounded by its own CPU cost. Per workload,
repetitions are interleaved (every peer runs once before any runs twice, in rotating order)
and each run waits for the machine to go quiet first. The table shows the median (min-max)
over the repetitions; the "noise" column is CPU time the machine spent during a run outside
the client and the server (other processes): rerun when it is high.

Peers, all given the same URL list (distinct ?i= queries) and the same concurrency C:
  asyncfetch   the installed command: asyncfetch -c C -r 0 -q URLFILE
  curl         curl --parallel --parallel-immediate --parallel-max C -K CONFIG, a -w JSON line per URL
  httpx        benchmarks/naive_httpx.py: one httpx.AsyncClient, an asyncio.Queue, C workers

Raw rows and the tables are written to benchmarks/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import benchlib
from server import Server, running_server


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    urls: int
    path: str
    concurrency: int
    ideal_s: float | None  # latency-bound workloads: URLs x sleep / C
    timeout_s: float  # a run is killed after this; a peer killed on rep 1 is not repeated


WORKLOADS = {
    "W1": Workload("W1", 20_000, "/ok", 100, None, 300),
    "W2": Workload("W2", 5_000, "/sleep/100", 500, 1.0, 300),
    "W3": Workload("W3", 2_000, "/bytes/100k", 50, None, 180),
}
PEERS = ("asyncfetch", "curl", "httpx")
CURL_PARALLEL_CAP = 300  # curl clamps --parallel-max to this (7.66 to at least 8.x)


@dataclass(frozen=True, slots=True)
class Row:
    workload: str
    peer: str
    concurrency: int
    rep: int
    urls: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    returncode: int
    timed_out: bool
    ok: int  # records with status 200
    served: int | None  # requests the server answered during the run
    conns: int | None  # connections the server accepted during the run
    server_cpu_s: float | None
    noise_cpu_s: float | None  # machine CPU during the run outside client and server


@dataclass(frozen=True, slots=True)
class Context:
    asyncfetch: str
    python: str
    client_cpu: int | None
    quiet_max: float
    scratch: Path


def peer_command(peer: str, ctx: Context, urlfile: Path, curl_config: Path, concurrency: int) -> list[str]:
    if peer == "asyncfetch":
        return [ctx.asyncfetch, "-c", str(concurrency), "-r", "0", "-q", str(urlfile)]
    if peer == "curl":
        write_out = '{"url": "%{url}", "status": %{http_code}, "size": %{size_download}, "s": %{time_total}}\\n'
        return [
            "curl",
            "--parallel",
            "--parallel-immediate",
            "--parallel-max",
            str(concurrency),
            "--silent",
            "--config",
            str(curl_config),
            "--write-out",
            write_out,
        ]
    if peer == "httpx":
        return [ctx.python, str(benchlib.BENCH_DIR / "naive_httpx.py"), str(urlfile), str(concurrency)]
    raise ValueError(peer)


def write_curl_config(path: Path, urlfile: Path) -> None:
    """One url/output pair per URL: curl reads its URL list from a config file."""
    with urlfile.open(encoding="ascii") as src, path.open("w", encoding="ascii") as dst:
        for line in src:
            dst.write(f'url = "{line.strip()}"\noutput = "/dev/null"\n')


def run_one(
    ctx: Context, server: Server, wl: Workload, peer: str, rep: int, urls: int, files: tuple[Path, Path]
) -> Row:
    urlfile, curl_config = files
    waited = benchlib.wait_quiet(ctx.quiet_max)
    if waited:
        print(f"    (waited {waited:.0f} s for the machine to go quiet)", file=sys.stderr)
    out_path, err_path = ctx.scratch / "out.jsonl", ctx.scratch / "err.txt"
    counts0, server0, busy0 = server.counts(), server.cpu_seconds(), benchlib.busy_seconds()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        m = benchlib.run_measured(
            benchlib.pinned(peer_command(peer, ctx, urlfile, curl_config, wl.concurrency), ctx.client_cpu),
            timeout=wl.timeout_s,
            stdout=out,
            stderr=err,
        )
    busy1, server1, counts1 = benchlib.busy_seconds(), server.cpu_seconds(), server.counts()
    served = conns = None
    if counts0 and counts1:  # minus the status request of the second reading itself
        conns, served = counts1[0] - counts0[0] - 1, counts1[1] - counts0[1] - 1
    server_cpu = server1 - server0 if server0 is not None and server1 is not None else None
    noise = None
    if busy0 is not None and busy1 is not None:
        noise = max(0.0, busy1 - busy0 - m.cpu_s - (server_cpu or 0.0))
    row = Row(
        wl.name,
        peer,
        wl.concurrency,
        rep,
        urls,
        m.wall_s,
        m.cpu_s,
        m.rss_mb,
        m.returncode,
        m.timed_out,
        benchlib.count_status(out_path),
        served,
        conns,
        server_cpu,
        noise,
    )
    flag = "" if row.ok == urls and row.returncode == 0 else "  <-- CHECK"
    print(
        f"{wl.name} {peer:<10} rep {rep}  wall={m.wall_s:7.2f}s  cpu={m.cpu_s:7.2f}s  rss={m.rss_mb:6.1f}MB  "
        f"ok={row.ok}/{urls}  served={served}  conns={conns}  rc={m.returncode}"
        f"{'  TIMEOUT' if m.timed_out else ''}  noise={noise if noise is None else round(noise, 2)}s{flag}",
        file=sys.stderr,
    )
    if m.returncode != 0:
        tail = err_path.read_bytes()[-600:].decode(errors="replace").strip()
        if tail:
            print("    stderr: " + tail.replace("\n", "\n    stderr: "), file=sys.stderr)
    return row


def curl_ideal(wl: Workload, n: int) -> float:
    """Ideal wall time of a latency-bound workload at curl's capped concurrency."""
    assert wl.ideal_s is not None
    sleep_s = wl.ideal_s * wl.concurrency / wl.urls
    return math.ceil(n / min(wl.concurrency, CURL_PARALLEL_CAP)) * sleep_s


def ratio(value: float, reference: float | None) -> str:
    if reference is None or reference <= 0:
        return "-"
    return times(value / reference)


def times(r: float) -> str:
    """A ratio for people: 140x, 7.4x, 0.82x, 0.053x."""
    if r >= 10:
        return f"{r:.0f}x"
    if r >= 0.1:
        return f"{r:.2f}x" if r < 1 else f"{r:.1f}x"
    return f"{r:.2g}x"


def compared(value: float, reference: float, what: str) -> str:
    """'2.8x the time' or '19x less CPU': ratios below 1 read better inverted."""
    if value >= reference:
        return f"{times(value / reference)} the {what}"
    return f"{times(reference / value)} less {what}" if what == "CPU" else f"{times(reference / value)} faster"


def summarize(rows: Sequence[Row], workloads: Sequence[Workload], peers: Sequence[str]) -> tuple[str, list[str]]:
    """The markdown table of medians and one line per workload comparing asyncfetch to the others."""
    header = [
        "workload",
        "peer",
        "C",
        "wall s",
        "req/s",
        "CPU s",
        "CPU us/req",
        "peak RSS MB",
        "ok",
        "conns",
        "noise s",
        "wall vs curl",
        "wall vs httpx",
        "CPU vs curl",
        "CPU vs httpx",
    ]
    table: list[list[str]] = []
    lines: list[str] = []
    for wl in workloads:
        by_peer = {p: [r for r in rows if r.workload == wl.name and r.peer == p] for p in peers}
        done = {p: [r for r in rs if not r.timed_out] for p, rs in by_peer.items()}
        med_wall = {p: statistics.median(r.wall_s for r in rs) if rs else None for p, rs in done.items()}
        med_cpu = {p: statistics.median(r.cpu_s for r in rs) if rs else None for p, rs in done.items()}
        for peer in peers:
            rs, ok_rs = by_peer[peer], done[peer]
            if not rs:
                continue
            n = rs[0].urls
            if not ok_rs:
                table.append(
                    [wl.name, peer, str(wl.concurrency), f"> {wl.timeout_s:.0f} (killed)"] + ["-"] * (len(header) - 4)
                )
                continue
            walls, cpus = [r.wall_s for r in ok_rs], [r.cpu_s for r in ok_rs]
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            conns = [r.conns for r in ok_rs if r.conns is not None]
            noises = [r.noise_cpu_s for r in ok_rs if r.noise_cpu_s is not None]
            table.append(
                [
                    wl.name,
                    peer,
                    str(wl.concurrency),
                    benchlib.med_range(walls),
                    f"{n / wall:,.0f}",
                    benchlib.med_range(cpus),
                    f"{cpu / n * 1e6:,.0f}",
                    benchlib.med_range([r.rss_mb for r in ok_rs], "{:.0f}"),
                    f"{min(r.ok for r in ok_rs)}/{n}",
                    f"{statistics.median(conns):.0f}" if conns else "-",
                    f"{max(noises):.1f}" if noises else "-",
                    "-" if peer == "curl" else ratio(wall, med_wall.get("curl")),
                    "-" if peer == "httpx" else ratio(wall, med_wall.get("httpx")),
                    "-" if peer == "curl" else ratio(cpu, med_cpu.get("curl")),
                    "-" if peer == "httpx" else ratio(cpu, med_cpu.get("httpx")),
                ]
            )
        af_wall, af_cpu = med_wall.get("asyncfetch"), med_cpu.get("asyncfetch")
        if af_wall is not None and af_cpu is not None:
            parts = []
            for ref, label in (("curl", "curl --parallel"), ("httpx", "naive httpx")):
                rw, rc = med_wall.get(ref), med_cpu.get(ref)
                if rw and rc:
                    parts.append(f"{label} {rw:.2f} s ({compared(af_wall, rw, 'time')}, {compared(af_cpu, rc, 'CPU')})")
                elif by_peer.get(ref):
                    parts.append(f"{label} killed at {wl.timeout_s:.0f} s")
            if parts:
                lines.append(f"- {wl.name}: asyncfetch {af_wall:.2f} s vs " + "; ".join(parts) + ".")
    return benchlib.markdown_table(header, table), lines


# --- start-up -------------------------------------------------------------------------------


def startup_commands(ctx: Context, server: Server, scratch: Path) -> list[tuple[str, list[str]]]:
    one = scratch / "one_url.txt"
    one.write_text(server.url("/ok") + "\n")
    commands = [
        ("python -c pass", [ctx.python, "-c", "pass"]),
        ("asyncfetch --version", [ctx.asyncfetch, "--version"]),
        ("asyncfetch, one URL", [ctx.asyncfetch, "-q", "-r", "0", str(one)]),
    ]
    if shutil.which("curl"):
        commands.append(("curl, one URL", ["curl", "--silent", "--output", "/dev/null", server.url("/ok")]))
    return commands


def measure_startup(ctx: Context, server: Server, runs: int) -> str:
    """Median (min-max) wall time of each start-up command, in ms: hyperfine if installed, else
    our own interleaved repetitions."""
    commands = startup_commands(ctx, server, ctx.scratch)
    results: dict[str, list[float]] = {}
    hyperfine = shutil.which("hyperfine")
    if hyperfine:
        export = ctx.scratch / "hyperfine.json"
        cmd = [hyperfine, "--warmup", "3", "--runs", str(runs), "-N", "--export-json", str(export), "--style", "basic"]
        for name, argv in commands:
            cmd += ["--command-name", name, shlex.join(argv)]
        subprocess.run(benchlib.pinned(cmd, ctx.client_cpu), check=True, env=benchlib.child_env())
        # results come in the order of the commands (their "command" is the --command-name)
        for (name, _argv), entry in zip(commands, json.loads(export.read_text())["results"], strict=True):
            results[name] = [t * 1000 for t in entry["times"]]
        how = f"hyperfine, {runs} runs after 3 warm-up runs"
    else:
        for _ in range(3):  # warm-up: page cache, .pyc files
            for _name, argv in commands:
                benchlib.run_measured(benchlib.pinned(argv, ctx.client_cpu), timeout=60, peak_rss=False)
        for _ in range(runs):
            for name, argv in commands:
                m = benchlib.run_measured(benchlib.pinned(argv, ctx.client_cpu), timeout=60, peak_rss=False)
                results.setdefault(name, []).append(m.wall_s * 1000)
        how = f"{runs} interleaved runs after 3 warm-up rounds (hyperfine not installed)"
    base = statistics.median(results["python -c pass"])
    rows = []
    for name, argv in commands:
        shown = shlex.join(argv).replace(str(ctx.scratch) + "/", "")
        extra = "-" if name == "python -c pass" else f"{statistics.median(results[name]) - base:+.0f}"
        rows.append([f"`{shown}`", benchlib.med_range(results[name], "{:.0f}"), extra])
    table = benchlib.markdown_table(["command", "wall ms, median (min-max)", "ms over `python -c pass`"], rows)
    return f"Start-up ({how}; pinned like the clients):\n\n{table}"


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    client_cpu, server_cpu = benchlib.default_cpus()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-w", "--workloads", nargs="+", choices=sorted(WORKLOADS), default=sorted(WORKLOADS))
    p.add_argument("--reps", type=int, default=3, help="repetitions per peer and workload (default 3)")
    p.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    p.add_argument("--scale", type=float, default=1.0, help="multiply every workload's URL count (quick looks)")
    p.add_argument("--startup-runs", type=int, default=20, help="runs per start-up command (default 20)")
    p.add_argument("--no-startup", action="store_true", help="skip the start-up measurements")
    p.add_argument("--startup-only", action="store_true", help="only the start-up measurements")
    p.add_argument("--port", type=int, default=benchlib.DEFAULT_PORT)
    p.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument("--client-cpu", type=int, default=client_cpu, help=f"default {client_cpu} (None: no pinning)")
    p.add_argument("--server-cpu", type=int, default=server_cpu, help=f"default {server_cpu}")
    p.add_argument("--no-pin", action="store_true", help="pin neither client nor server")
    p.add_argument("--quiet-max", type=float, default=60, help="longest wait for an idle machine before a run (s)")
    p.add_argument("--asyncfetch", help="the asyncfetch command (default: on PATH, else beside this Python)")
    p.add_argument("--results", type=Path, default=benchlib.RESULTS_DIR, help="where to write the report")
    args = p.parse_args(argv)
    if args.no_pin:
        args.client_cpu = args.server_cpu = None
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    nofile = benchlib.raise_open_files()
    peers = list(args.peers)
    notes: list[str] = []
    if "curl" in peers and shutil.which("curl") is None:
        peers.remove("curl")
        notes.append("curl is not installed: its rows are missing.")
    workloads = [] if args.startup_only else [WORKLOADS[w] for w in args.workloads]
    notes += [
        f"{wl.name}: the open-file limit {nofile} is low for C={wl.concurrency}."
        for wl in workloads
        if wl.concurrency * 2 + 100 > nofile
    ]
    ctx = Context(
        asyncfetch=benchlib.find_asyncfetch(args.asyncfetch),
        python=sys.executable,
        client_cpu=args.client_cpu,
        quiet_max=args.quiet_max,
        scratch=Path(tempfile.mkdtemp(prefix="asyncfetch-compare-")),
    )
    rows: list[Row] = []
    ran: list[Workload] = []
    startup = ""
    try:
        with running_server(args.server, args.port, args.server_cpu) as server:
            pin = (
                f"client pinned to CPU {ctx.client_cpu}, server to CPU {args.server_cpu}"
                if ctx.client_cpu is not None
                else "no CPU pinning"
            )
            print(f"{server.kind} server on {server.base}; {pin}. {server.note}".rstrip(), file=sys.stderr)
            for wl in workloads:
                if not server.can_serve(wl.path):
                    notes.append(
                        f"{wl.name} skipped: the {server.kind} server cannot serve {wl.path}"
                        + (
                            " (install libnginx-mod-http-echo, or use --server python)"
                            if server.kind == "nginx"
                            else ""
                        )
                    )
                    continue
                n = max(1, round(wl.urls * args.scale))
                urlfile, curl_config = ctx.scratch / f"{wl.name}.urls", ctx.scratch / f"{wl.name}.curl"
                benchlib.write_url_list(urlfile, server.url(wl.path), n)
                write_curl_config(curl_config, urlfile)
                if "curl" in peers and wl.concurrency > CURL_PARALLEL_CAP:
                    notes.append(
                        f"{wl.name}: curl clamps --parallel-max to {CURL_PARALLEL_CAP}, so it runs at C="
                        f"{CURL_PARALLEL_CAP} (see its conns)"
                        + (f"; its ideal is {curl_ideal(wl, n):.2f} s" if wl.ideal_s else "")
                    )
                print(f"--- {wl.name}: {n} x {wl.path} at C={wl.concurrency}", file=sys.stderr)
                killed: set[str] = set()
                for rep in range(1, args.reps + 1):
                    shift = (rep - 1) % len(peers)
                    for peer in peers[shift:] + peers[:shift]:
                        if peer in killed:
                            continue
                        row = run_one(ctx, server, wl, peer, rep, n, (urlfile, curl_config))
                        rows.append(row)
                        if row.timed_out:
                            killed.add(peer)
                            notes.append(f"{wl.name} {peer}: killed at {wl.timeout_s:.0f} s on rep {rep}, not repeated")
                ran.append(wl)
            if not args.no_startup:
                print("--- start-up", file=sys.stderr)
                startup = measure_startup(ctx, server, args.startup_runs)
            server_kind = server.kind
    finally:
        shutil.rmtree(ctx.scratch, ignore_errors=True)

    command_line = list(argv) if argv is not None else sys.argv[1:]
    report = [
        "# asyncfetch compared with curl --parallel and naive httpx",
        "",
        f"- {benchlib.machine_line()}; {server_kind} server on 127.0.0.1; "
        + (
            f"client on CPU {ctx.client_cpu}, server on CPU {args.server_cpu}"
            if ctx.client_cpu is not None
            else "not pinned"
        ),
        f"- `{shlex.join(['python', 'benchmarks/compare.py', *command_line])}`",
        f"- asyncfetch: `{ctx.asyncfetch}` ({version(ctx.asyncfetch)}); "
        + (curl_version() if "curl" in peers else "")
        + f"; httpx {httpx_version(ctx.python)}",
    ]
    if ran:
        table, lines = summarize(rows, ran, peers)
        report += [
            "",
            f"Median (min-max) of {args.reps} interleaved repetitions. req/s from the median wall time. "
            "CPU: user+system of the client process. Peak RSS: "
            + benchlib.rss_method()
            + ". Ratios: the peer's median over the reference's (below 1x: less time or CPU than the reference).",
            "",
            table,
            "",
            *lines,
        ]
    if notes:
        report += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    if startup:
        report += ["", startup]
    text = "\n".join(report) + "\n"
    print()
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    base = args.results / f"compare-{benchlib.stamp()}"
    base.with_suffix(".md").write_text(text)
    with base.with_suffix(".jsonl").open("w") as f:
        f.writelines(json.dumps(asdict(r)) + "\n" for r in rows)
    print(f"wrote {base.with_suffix('.md')} and {base.with_suffix('.jsonl')}")


def version(command: str) -> str:
    out = subprocess.run([command, "--version"], capture_output=True, text=True, check=False, env=benchlib.child_env())
    return out.stdout.strip() or "version unknown"


def curl_version() -> str:
    out = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return " ".join(out.stdout.split()[:2])


def httpx_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import httpx; print(httpx.__version__)"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    main()
