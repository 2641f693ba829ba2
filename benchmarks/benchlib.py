"""Plumbing shared by the benchmark scripts: CPU pinning, measured child processes, machine
noise, medians and table formatting. Linux-first; every Linux-only part degrades to "not
measured" elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"  # git-ignored
DEFAULT_PORT = 8097

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# --- CPUs -------------------------------------------------------------------------------------


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_cpus() -> tuple[int | None, int | None]:
    """(client CPU, server CPU): the first and the last allowed CPU when there are 2+ and taskset
    exists, else (None, None): no pinning."""
    cpus = allowed_cpus()
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return cpus[0], cpus[-1]


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """``cmd`` run under ``taskset -c cpu`` (taskset execs it: same pid, same rusage)."""
    if cpu is None:
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


def raise_open_files() -> int:
    """Raise our soft open-file limit to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_env() -> dict[str, str]:
    """Our environment for measured children: no proxies (everything is 127.0.0.1) and no
    PYTHONUNBUFFERED (a user's shell does not set it; it makes Python peers write per line)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.pop("PYTHONUNBUFFERED", None)
    return env


def find_asyncfetch(explicit: str | None) -> str:
    """The asyncfetch command: ``explicit``, else on PATH, else next to this interpreter."""
    if explicit:
        return explicit
    found = shutil.which("asyncfetch")
    if found:
        return found
    beside = Path(sys.executable).parent / "asyncfetch"
    if beside.exists():
        return str(beside)
    sys.exit("benchmarks: cannot find the asyncfetch command (pip install -e . first, or pass --asyncfetch PATH)")


# --- measured runs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """One finished child process."""

    wall_s: float  # spawn to reap
    cpu_s: float  # user + system of the process and every descendant it reaped
    rss_mb: float  # peak resident set size of the process (or its largest descendant); 0: unknown
    returncode: int  # negative: killed by that signal
    timed_out: bool


# Peak RSS needs a middleman. A child's ru_maxrss (wait4, getrusage) starts from the peak RSS
# of the process it was exec'd from, and Python's subprocess spawns with vfork: every child
# would report at least our own peak RSS. So the command runs under a small process that
# fork()s it and reports the child's ru_maxrss: GNU time when installed (-f %M, ~2 MB floor),
# else this launcher (a bare Python interpreter, ~10 MB floor).
_LAUNCHER = """
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    f.write(f"{ru.ru_maxrss} {ru.ru_utime + ru.ru_stime} {wall}\\n")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@functools.cache
def gnu_time() -> str | None:
    """/usr/bin/time if it is GNU time (the shell keyword ``time`` cannot report memory)."""
    path = shutil.which("time") or "/usr/bin/time"
    if not Path(path).exists():
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return None
    return path if "GNU" in out.stdout + out.stderr else None


def rss_method() -> str:
    """How peak RSS is measured, for reports."""
    return "GNU time %M" if gnu_time() else "wait4 in a forking launcher (floor ~10 MB: a bare interpreter)"


def child_of(pid: int) -> int | None:
    """A child process of ``pid`` (the measured command under the middleman), if any yet."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = f.read().split()
        if children:
            return int(children[0])
    except OSError:
        pass
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                return int(entry.name)
    return None


def run_measured(
    cmd: Sequence[str],
    *,
    timeout: float,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    peak_rss: bool = True,
    on_start: Callable[[subprocess.Popen[bytes], Callable[[], int | None]], None] | None = None,
) -> Measured:
    """Run ``cmd``; return its wall time, CPU time (``wait4``) and peak RSS (see ``_LAUNCHER``).

    The child gets its own session; at ``timeout`` the whole group is killed. ``on_start``
    runs right after the spawn with the process and a function giving the pid of ``cmd``
    itself (to feed stdin or sample memory from another thread). ``peak_rss=False`` runs
    ``cmd`` directly (no middleman: for start-up times) and reports rss_mb 0.
    """
    with tempfile.TemporaryDirectory(prefix="asyncfetch-bench-rss-") as scratch:
        report = Path(scratch) / "rss"
        prefix: list[str] = []
        if peak_rss:
            timer_cmd = gnu_time()
            if timer_cmd:
                prefix = [timer_cmd, "-f", "%M", "-o", str(report), "--"]
            else:
                prefix = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*prefix, *cmd], stdin=stdin, stdout=stdout, stderr=stderr, env=env or child_env(), start_new_session=True
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        def target_pid() -> int | None:
            return child_of(proc.pid) if prefix else proc.pid

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            if on_start is not None:
                on_start(proc, target_pid)
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        cpu, rss_kb = usage.ru_utime + usage.ru_stime, 0.0
        if prefix:
            with contextlib.suppress(OSError, ValueError, IndexError):
                # GNU time may write "Command exited with non-zero status 1" first: the last line counts
                fields = report.read_text().strip().splitlines()[-1].split()
                rss_kb = float(fields[0])
                if len(fields) == 3:  # our launcher: the child's own CPU and wall time, without its start-up
                    cpu, wall = float(fields[1]), float(fields[2])
    return Measured(
        wall_s=wall,
        cpu_s=cpu,
        rss_mb=rss_kb / 1024,  # KiB on Linux
        returncode=proc.returncode,
        timed_out=timed_out.is_set(),
    )


# --- machine noise ----------------------------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine since boot (None without /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _HZ


def process_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a running process (None if gone or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _HZ  # utime, stime: fields 14 and 15 of stat


def wait_quiet(max_wait: float, *, threshold: float = 0.10) -> float:
    """Wait until the machine is less than ``threshold`` busy over one second, at most
    ``max_wait`` seconds; returns how long it waited."""
    cpus = len(allowed_cpus())
    waited = 0.0
    while waited < max_wait:
        b0 = busy_seconds()
        if b0 is None:
            return waited
        time.sleep(1.0)
        b1 = busy_seconds()
        if b1 is None or (b1 - b0) < threshold * cpus:
            return waited
        waited += 1.0
    return waited


def rss_mb_now(pid: int) -> float | None:
    """Current resident set size of ``pid`` in MB (VmRSS), None if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


# --- summaries --------------------------------------------------------------------------------


def med_range(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """'median (min-max)', or the lone value."""
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def write_url_list(path: Path, base: str, n: int) -> None:
    """``n`` URLs ``base?i=0`` .. ``base?i=n-1``: all distinct, so nothing can be deduplicated or cached."""
    with path.open("w", encoding="ascii") as f:
        f.writelines(f"{base}?i={i}\n" for i in range(n))


def count_status(path: Path, status: int = 200) -> int:
    """Lines of a JSON-lines file whose "status" is ``status`` (any spacing after the colon)."""
    needles = (f'"status":{status},'.encode(), f'"status": {status},'.encode())
    count = 0
    with path.open("rb") as f:
        for line in f:
            if needles[0] in line or needles[1] in line:
                count += 1
    return count


def stamp() -> str:
    """A sortable timestamp for result file names."""
    return time.strftime("%Y-%m-%d-%H%M%S")


def machine_line() -> str:
    """One line on the machine: CPUs, model, kernel, Python."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    uname = os.uname()
    return (
        f"{len(allowed_cpus())} CPUs{f' ({model})' if model else ''}, {uname.sysname} {uname.release}, "
        f"Python {sys.version.split()[0]}"
    )
