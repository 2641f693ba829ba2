"""The distributed commands against the one-machine command: throughput, overhead, Redis CPU.

    python benchmarks/distributed.py                          # 100,000 requests; 1, 2 and 4 workers
    python benchmarks/distributed.py -n 20000 --workers 1,2   # a quick look
    python benchmarks/distributed.py --help

Starts its own redis-server (no persistence unless --appendonly) and its own nginx (one
process, `master_process off`, answering /ok) on free loopback ports, in a temp dir, and stops
both at the end. Then, for the same list of N distinct URLs (/ok?i=0 .. /ok?i=N-1):

  single       asyncfetch -c C -q URLFILE > FILE
  W workers    asyncfetch enqueue URLFILE, then W x `asyncfetch work --burst -c C -q` and
               `asyncfetch collect --follow -o FILE` side by side

and checks every run wrote exactly N records, indexes 0..N-1 once each. The setups run --reps
times (3), interleaved and rotated; each row shows the repetition with the median time, and the
req/s range over all of them. Per setup it prints: wall time; req/s (N over the time to the last
record: the queue's last done bit in Redis, or the one-machine command's exit); the overhead per
request over the one-machine command (wall and CPU); CPU per request of enqueue, the workers,
the collector, redis-server and nginx (user + system, from wait4 and /proc/PID/stat); the CPU
other processes took meanwhile (noise); and, from redis-server's CPU per request, how many
workers one Redis could feed, and Redis's memory at the end.

Every process shares this machine's CPUs (no pinning): on a machine with fewer cores than
workers + Redis + nginx, more workers do not mean more throughput; what the run measures is
the cost the queue adds per request.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_INDEX = re.compile(rb'"index":(\d+)')
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

NGINX_CONF = """\
daemon off;
master_process off;          # one process: its CPU is one /proc/PID/stat
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /ok {{ default_type text/plain; return 200 "ok\\n"; }}
    }}
}}
"""


# -- helpers ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def clean_env() -> dict[str, str]:
    """This environment without ASYNCFETCH_* settings or proxies (everything here is loopback)."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("ASYNCFETCH_") and name.lower() not in _PROXY_VARS
    }


def asyncfetch_command() -> list[str]:
    script = Path(sys.executable).with_name("asyncfetch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "asyncfetch"]


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def check_records(path: Path, count: int) -> None:
    """Exactly ``count`` records, indexes 0..count-1 once each; raises otherwise."""
    seen = bytearray(count)
    lines = 0
    with path.open("rb") as records:
        for line in records:
            lines += 1
            match = _INDEX.search(line)
            if match is None or int(match.group(1)) >= count or seen[int(match.group(1))]:
                raise SystemExit(f"{path}: bad or repeated record: {line[:200]!r}")
            seen[int(match.group(1))] = 1
    if lines != count:
        raise SystemExit(f"{path}: {lines} records for {count} requests")


# -- servers ----------------------------------------------------------------------------------------


@contextmanager
def nginx(directory: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """nginx answering http://127.0.0.1:PORT/ok; yields the process and the base URL."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    directory.mkdir()
    port = free_port()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port, nofile=min(nofile, 1 << 20)))
    process = subprocess.Popen(
        [binary, "-p", str(directory), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 10
        while True:
            try:
                with opener.open(base + "/ok", timeout=1) as answer:
                    if answer.read() == b"ok\n":
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"nginx did not start: {process.stderr.read() if process.stderr else ''!r}"
                    ) from None
                time.sleep(0.05)
        yield process, base
    finally:
        stop(process, signal.SIGQUIT)
        if process.stderr is not None:
            process.stderr.close()


@contextmanager
def redis_server(directory: Path, *, appendonly: bool) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server on a free loopback port; yields the process and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    directory.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--logfile", str(directory / "redis.log"), "--daemonize", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        with redis.Redis(port=port) as probe:
            while True:
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.05)
        yield process, url
    finally:
        stop(process)


# -- runs -------------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    workers: int  # 0: the one-machine command
    wall: float  # start to the exit of the last process, enqueue included
    busy: float  # start to the last record (the queue's last done bit; the exit for `single`)
    enqueue: float  # seconds enqueue took
    enqueue_cpu: float
    worker_cpu: float  # the one-machine command's CPU for `single`
    collect_cpu: float
    redis_cpu: float
    nginx_cpu: float
    redis_memory: int = 0  # used_memory at the end: the queue's streams are kept, not trimmed
    noise: float = 0.0  # CPU seconds the machine spent on other processes meanwhile

    @property
    def client_cpu(self) -> float:
        return self.enqueue_cpu + self.worker_cpu + self.collect_cpu


def has_exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the child has ended, without reaping it (its resource usage stays for :func:`reap`)."""
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def reap(process: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for the child's end; returns its user + system CPU seconds (raises if it failed)."""
    deadline = time.monotonic() + timeout
    while not has_exited(process):
        if time.monotonic() > deadline:
            raise SystemExit(f"{process.args!r} still running after {timeout} s")
        time.sleep(0.01)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{process.args!r} exited with {process.returncode}")
    return usage.ru_utime + usage.ru_stime


def run_single(command: Sequence[str], urls: Path, out: Path, count: int, concurrency: int, web_pid: int) -> Run:
    web0, busy0 = process_cpu(web_pid), machine_busy()
    started = time.monotonic()
    with out.open("wb") as sink:
        process = subprocess.Popen([*command, "-c", str(concurrency), "-q", str(urls)], stdout=sink, env=clean_env())
    try:
        cpu = reap(process, 1800)
    finally:
        stop(process, signal.SIGKILL)
    wall = time.monotonic() - started
    run = Run("single", 0, wall, wall, 0.0, 0.0, cpu, 0.0, 0.0, process_cpu(web_pid) - web0)
    run.noise = max(0.0, machine_busy() - busy0 - run.client_cpu - run.nginx_cpu)
    check_records(out, count)
    return run


def run_queue(
    command: Sequence[str],
    urls: Path,
    out: Path,
    count: int,
    concurrency: int,
    workers: int,
    chunk: int,
    redis_url: str,
    redis_pid: int,
    web_pid: int,
) -> Run:
    queue = f"bench-{workers}"
    env = clean_env()
    common = ["--redis", redis_url, "--queue", queue]
    with redis.Redis.from_url(redis_url) as admin:
        admin.flushall()
        redis0, web0, busy0 = process_cpu(redis_pid), process_cpu(web_pid), machine_busy()
        started = time.monotonic()
        enqueue = subprocess.Popen(
            [*command, "enqueue", *common, "--chunk-size", str(chunk), str(urls)], env=env, stderr=subprocess.DEVNULL
        )
        try:
            enqueue_cpu = reap(enqueue, 600)
        finally:
            stop(enqueue, signal.SIGKILL)
        enqueued = time.monotonic()
        processes = [
            subprocess.Popen([*command, "work", *common, "--burst", "-c", str(concurrency), "-q"], env=env)
            for _ in range(workers)
        ]
        processes.append(subprocess.Popen([*command, "collect", *common, "--follow", "-q", "-o", str(out)], env=env))
        try:
            done_key = f"asyncfetch:{queue}:done"
            while admin.bitcount(done_key) < count:
                if all(has_exited(process) for process in processes):
                    raise SystemExit(f"{workers} workers exited with {admin.bitcount(done_key)} of {count} done")
                time.sleep(0.02)
            busy = time.monotonic() - started
            cpus = [reap(process, 600) for process in processes]
        finally:
            for process in processes:
                stop(process, signal.SIGKILL)
        wall = time.monotonic() - started
        run = Run(
            f"{workers} worker{'s' if workers > 1 else ''}",
            workers,
            wall,
            busy,
            enqueued - started,
            enqueue_cpu,
            sum(cpus[:-1]),
            cpus[-1],
            process_cpu(redis_pid) - redis0,
            process_cpu(web_pid) - web0,
            int(admin.info("memory")["used_memory"]),
        )
        run.noise = max(0.0, machine_busy() - busy0 - run.client_cpu - run.redis_cpu - run.nginx_cpu)
    check_records(out, count)
    return run


# -- report -----------------------------------------------------------------------------------------


def report(all_runs: dict[int, list[Run]], count: int, args: argparse.Namespace) -> None:
    # Per setup, the repetition with the median time to the last record (its columns stay consistent).
    runs = [sorted(reps, key=lambda run: run.busy)[len(reps) // 2] for reps in all_runs.values()]
    rates = {run.label: sorted(count / rep.busy for rep in all_runs[run.workers]) for run in runs}
    single = runs[0]
    cpus = os.cpu_count() or 1
    per = 1e6 / count  # seconds per run -> microseconds per request
    print()
    print(
        f"asyncfetch distributed benchmark: {count:,} requests to nginx /ok on 127.0.0.1, -c {args.concurrency} "
        f"per process, chunks of {args.chunk_size}, Redis appendonly {'yes' if args.appendonly else 'no'}"
    )
    print(
        f"machine: {cpus} CPU cores shared by nginx (1 process), redis-server and every asyncfetch process (no pinning)"
    )
    if cpus < 4:
        print(
            f"NOTE: this machine has {cpus} cores: with 2 and 4 workers (+ collector, Redis and nginx) every run is "
            "CPU-bound, so more workers cannot mean more throughput here; read the figures as the cost the queue "
            "adds per request, not as a speed-up."
        )
    print()
    header = (
        f"{'run':<10} {'wall s':>7} {'enq s':>6} {'req/s':>7} {'(min-max)':>13} {'us/req':>7} {'+us/req':>8} "
        f"{'CPU us/req: enqueue':>19} {'work':>6} {'collect':>7} {'redis':>6} {'nginx':>6} {'+CPU':>6} {'noise s':>7}"
    )
    print(header)
    print("-" * len(header))
    single_cpu = single.client_cpu * per
    for run in runs:
        total_cpu = (run.client_cpu + run.redis_cpu) * per
        spread = f"({rates[run.label][0]:,.0f}-{rates[run.label][-1]:,.0f})"
        print(
            f"{run.label:<10} {run.wall:>7.2f} {run.enqueue:>6.2f} {count / run.busy:>7,.0f} {spread:>13} "
            f"{run.busy * per:>7.1f} {(run.busy - single.busy) * per if run.workers else 0.0:>+8.1f} "
            f"{run.enqueue_cpu * per:>19.1f} {run.worker_cpu * per:>6.1f} {run.collect_cpu * per:>7.1f} "
            f"{run.redis_cpu * per:>6.1f} {run.nginx_cpu * per:>6.1f} "
            f"{total_cpu - single_cpu if run.workers else 0.0:>+6.1f} {run.noise:>7.1f}"
        )
    print()
    print(
        "req/s and us/req: over the time to the last record (the queue's last done bit in Redis; for `single`, its "
        "exit), enqueue included. wall s: to the exit of every process (a --burst worker polls once more, 2 s, "
        "before it exits; collect --follow's last read waits up to 1 s)."
    )
    print(
        "CPU us/req: user + system CPU per request of each part (`work`: all workers together; for `single`, the "
        "one-machine command). +us/req and +CPU: over the one-machine command, per request (+CPU counts the "
        "asyncfetch processes and redis-server, not nginx). noise s: CPU the machine spent on other processes "
        "during the run (rerun when high). Each row is the repetition with the median time."
    )
    queue_runs = [run for run in runs if run.workers]
    if queue_runs:
        print()
        first = queue_runs[0]
        one_worker_rate = count / first.busy
        per_core_rate = count / first.worker_cpu if first.worker_cpu > 0 else float("inf")
        for run in queue_runs:
            redis_rate = count / run.redis_cpu if run.redis_cpu > 0 else float("inf")
            print(
                f"{run.label}: redis-server {run.redis_cpu:.2f} CPU s per {count:,} requests "
                f"({run.redis_cpu / count * 100_000:.2f} CPU s per 100k): one Redis core takes ~{redis_rate:,.0f} "
                f"req/s; Redis memory at the end {run.redis_memory / 2**20:,.0f} MiB "
                f"({run.redis_memory / count:,.0f} B per request, never trimmed)"
            )
        best = min(run.redis_cpu for run in queue_runs) / count
        worst = max(run.redis_cpu for run in queue_runs) / count
        print(
            f"workers one Redis can feed: ~{1 / worst / one_worker_rate:,.0f}-{1 / best / one_worker_rate:,.0f} "
            f"at the {one_worker_rate:,.0f} req/s one worker made here (sharing 2 cores), "
            f"~{1 / worst / per_core_rate:,.0f}-{1 / best / per_core_rate:,.0f} at the {per_core_rate:,.0f} req/s "
            "a worker with a core of its own would make (its CPU cost per request)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--requests", type=int, default=100_000, help="requests per run (default 100000)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run (default 1,2,4)")
    parser.add_argument("-c", "--concurrency", type=int, default=100, help="-c of each process (default 100)")
    parser.add_argument("--chunk-size", type=int, default=500, help="enqueue --chunk-size (default 500)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, interleaved; medians shown (default 3)")
    parser.add_argument("--appendonly", action="store_true", help="run redis-server with appendonly yes")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.workers.split(",") if part.strip()]
    command = asyncfetch_command()
    count = args.requests
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    del soft
    with tempfile.TemporaryDirectory(prefix="asyncfetch-dist-bench-") as scratch:
        root = Path(scratch)
        with (
            nginx(root / "nginx") as (web, base),
            redis_server(root / "redis", appendonly=args.appendonly) as (
                store,
                redis_url,
            ),
        ):
            urls = root / "urls.txt"
            with urls.open("w") as lines:
                lines.writelines(f"{base}/ok?i={i}\n" for i in range(count))
            # A warm-up, so the first measured run does not pay for cold caches.
            warm = root / "warm.txt"
            warm.write_text("".join(f"{base}/ok?warm={i}\n" for i in range(2000)))
            subprocess.run([*command, "-q", str(warm)], stdout=subprocess.DEVNULL, env=clean_env(), check=True)
            runs: dict[int, list[Run]] = {workers: [] for workers in [0, *counts]}
            order = list(runs)
            for repetition in range(args.reps):
                # Interleaved and rotated: every setup runs once before any runs twice.
                turn = repetition % len(order)
                for workers in order[turn:] + order[:turn]:
                    out = root / f"run-{workers}.jsonl"
                    if workers == 0:
                        print(f"[{repetition + 1}/{args.reps}] single: {' '.join(command)} -c C -q URLS", flush=True)
                        run = run_single(command, urls, out, count, args.concurrency, web.pid)
                    else:
                        print(
                            f"[{repetition + 1}/{args.reps}] enqueue + {workers} x work --burst + collect --follow",
                            flush=True,
                        )
                        run = run_queue(
                            command,
                            urls,
                            out,
                            count,
                            args.concurrency,
                            workers,
                            args.chunk_size,
                            redis_url,
                            store.pid,
                            web.pid,
                        )
                    out.unlink()
                    runs[workers].append(run)
    report(runs, count, args)


if __name__ == "__main__":
    main()
