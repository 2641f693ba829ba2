"""The benchmark server on 127.0.0.1: nginx when installed, else benchmarks/pyserver.py.

    python benchmarks/server.py [--port 8097] [--kind auto|nginx|python] [--cpu N]

runs it in the foreground until ^C and prints its URLs. The other scripts use
:func:`running_server`, which starts it, waits until it answers, and stops it on the way out.

nginx gets its own configuration (benchmarks/nginx.conf) in a scratch directory under /tmp,
one worker, pinned to one CPU with taskset when there are 2+ CPUs. /sleep/MS needs nginx's echo
module (Debian: libnginx-mod-http-echo); without it nginx serves only /ok and /bytes/*, and
:func:`running_server` with ``need_sleep=True`` falls back to the Python server.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import benchlib

ECHO_MODULE_DIRS = (
    "/usr/lib/nginx/modules",  # Debian, Ubuntu
    "/usr/lib64/nginx/modules",  # Fedora, RHEL
    "/usr/share/nginx/modules",
    "/etc/nginx/modules",
    "/usr/local/nginx/modules",
)
ECHO_MODULE = "ngx_http_echo_module.so"
STATIC_FILES = {"1k": 1024, "100k": 100 * 1024, "1m": 1024 * 1024}


@dataclass
class Server:
    """A running benchmark server."""

    kind: str  # "nginx" or "python"
    port: int
    serves: frozenset[str]  # of "ok", "sleep", "bytes"
    proc: subprocess.Popen[bytes]
    scratch: Path | None = None
    note: str = ""
    _worker_pid: int | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + "/" + path.lstrip("/")

    def can_serve(self, path: str) -> bool:
        """Whether ``path`` (e.g. "/sleep/100") is one this server answers."""
        return path.strip("/").split("/", 1)[0] in self.serves

    def counts(self) -> tuple[int, int] | None:
        """(connections accepted, requests served) so far, this request included; None if unknown."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/server_status")
            text = conn.getresponse().read().decode()
            conn.close()
        except (OSError, http.client.HTTPException):
            return None
        match = re.search(r"^\s*(\d+)\s+\d+\s+(\d+)\s*$", text, re.MULTILINE)
        return (int(match.group(1)), int(match.group(2))) if match else None

    def cpu_seconds(self) -> float | None:
        """CPU time the server process that does the work (nginx's worker) has used so far."""
        if self._worker_pid is None:
            self._worker_pid = _nginx_worker(self.proc.pid) if self.kind == "nginx" else self.proc.pid
        return None if self._worker_pid is None else benchlib.process_cpu_seconds(self._worker_pid)

    def stop(self) -> None:
        """Stop the server (nginx: graceful, then harder) and remove its scratch directory."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _nginx_worker(master: int) -> int | None:
    """The pid of the (single) worker process of the nginx master ``master``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == master:
            return int(entry.name)
    return None


def find_echo_module() -> str | None:
    """Path of nginx's echo module, if installed."""
    for directory in ECHO_MODULE_DIRS:
        candidate = Path(directory) / ECHO_MODULE
        if candidate.exists():
            return str(candidate)
    return None


def nginx_binary() -> str | None:
    """The nginx executable (on PATH, or /usr/sbin for users without it on PATH)."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


def nginx_version() -> tuple[int, ...] | None:
    """nginx's version, or None when nginx is not installed."""
    nginx = nginx_binary()
    if nginx is None:
        return None
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"nginx/(\d+(?:\.\d+)*)", out.stderr + out.stdout)
    return tuple(int(x) for x in match.group(1).split(".")) if match else (0,)


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            sys.exit(f"benchmarks: port {port} on 127.0.0.1 is taken ({exc.strerror}); choose another with --port")


def _wait_ready(server: Server, log: Path | None) -> None:
    try:
        _poll_ready(server, log)
    except BaseException:
        server.stop()
        raise


def _poll_ready(server: Server, log: Path | None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        if server.counts() is not None:
            return
        time.sleep(0.05)
    detail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    sys.exit(f"benchmarks: the {server.kind} server did not come up on port {server.port}\n{detail}")


def start_nginx(port: int, cpu: int | None) -> Server:
    """nginx with benchmarks/nginx.conf, in a fresh scratch directory."""
    echo = find_echo_module()
    scratch = Path(tempfile.mkdtemp(prefix=f"asyncfetch-bench-nginx-{port}-"))
    scratch.chmod(0o755)  # nginx's worker may run as another user: it must read www/
    www = scratch / "www" / "bytes"
    www.mkdir(parents=True)
    (scratch / "tmp").mkdir()
    for name, size in STATIC_FILES.items():
        (www / name).write_bytes(os.urandom(size))
    for path in (scratch / "www", www, *www.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    nofile = benchlib.raise_open_files()
    template = (benchlib.BENCH_DIR / "nginx.conf").read_text()
    lines = []
    for line in template.splitlines():
        if not line.startswith("#echo# "):
            lines.append(line)
        elif echo is not None:
            lines.append(line.removeprefix("#echo# "))
    conf = (
        "\n".join(lines)
        .replace("{{PORT}}", str(port))
        .replace("{{DIR}}", str(scratch))
        .replace("{{NOFILE}}", str(nofile))
        .replace("{{ECHO_MODULE}}", echo or "")
    )
    (scratch / "nginx.conf").write_text(conf + "\n")
    cmd = [nginx_binary() or "nginx", "-p", str(scratch), "-c", str(scratch / "nginx.conf")]
    if (nginx_version() or (0,)) >= (1, 19, 5):
        cmd += ["-e", str(scratch / "error.log")]  # else it first tries /var/log/nginx/error.log
    log = scratch / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            benchlib.pinned(cmd, cpu), stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
    serves = frozenset({"ok", "bytes", "sleep"} if echo else {"ok", "bytes"})
    note = "" if echo else "nginx without the echo module (libnginx-mod-http-echo): no /sleep/MS"
    server = Server("nginx", port, serves, proc, scratch, note)
    _wait_ready(server, scratch / "error.log")
    return server


def start_python(port: int, cpu: int | None) -> Server:
    """benchmarks/pyserver.py in a child process."""
    scratch = Path(tempfile.mkdtemp(prefix=f"asyncfetch-bench-pyserver-{port}-"))
    log = scratch / "stderr.log"
    cmd = [sys.executable, str(benchlib.BENCH_DIR / "pyserver.py"), "--port", str(port)]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            benchlib.pinned(cmd, cpu), stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
    server = Server("python", port, frozenset({"ok", "bytes", "sleep"}), proc, scratch, "pure-Python asyncio server")
    _wait_ready(server, log)
    return server


def start_server(kind: str, port: int, cpu: int | None, *, need_sleep: bool = False) -> Server:
    """Start the server of ``kind`` ("auto": nginx when installed, and able to sleep if needed)."""
    check_port_free(port)
    if kind == "nginx" and nginx_version() is None:
        sys.exit("benchmarks: --server nginx, but nginx is not installed")
    use_nginx = kind == "nginx" or (
        kind == "auto" and nginx_version() is not None and (find_echo_module() is not None or not need_sleep)
    )
    return start_nginx(port, cpu) if use_nginx else start_python(port, cpu)


@contextlib.contextmanager
def running_server(kind: str, port: int, cpu: int | None, *, need_sleep: bool = False) -> Iterator[Server]:
    """A started server, stopped on exit (^C and SIGTERM included)."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    server = start_server(kind, port, cpu, need_sleep=need_sleep)
    try:
        yield server
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=benchlib.DEFAULT_PORT)
    parser.add_argument("--kind", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--cpu", type=int, default=benchlib.default_cpus()[1], help="CPU to pin the server to")
    args = parser.parse_args()
    with running_server(args.kind, args.port, args.cpu) as server:
        pin = f", pinned to CPU {args.cpu}" if args.cpu is not None else ""
        print(f"{server.kind} server on {server.base}{pin}; ^C stops it. {server.note}".rstrip())
        for path in ("/ok", "/sleep/100", "/bytes/1k", "/bytes/100k", "/bytes/1m"):
            if server.can_serve(path):
                print(f"  {server.url(path)}")
        print(f"  {server.url('/server_status')}  (connections accepted, requests served)")
        with contextlib.suppress(KeyboardInterrupt):
            while server.proc.poll() is None:
                time.sleep(0.5)


if __name__ == "__main__":
    main()
