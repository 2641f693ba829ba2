"""Real servers from Debian's packages, run for the interoperability suite.

Each server is a child process in a session of its own (stopping it stops its workers too), with a
config written to a temp dir of its own and a port picked by binding port 0. It counts as ready once a
process of its own listens on that port and accepts a connection; a server that exits first, or
another program that took the port meanwhile, makes :func:`start_on_free_port` try a fresh port. Every
wait has a deadline that raises, with the tail of the server's log in the message.

Servers run as root here; those that insist on dropping privileges (apache2, squid, h2o) get user
``nobody`` and directories it can read, which is why :func:`public_tempdir` exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Debian installs servers in sbin directories, which a non-login PATH may lack.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
READY_DEADLINE = 30.0  # seconds a server may take to listen; generous: two cores shared by many
STOP_DEADLINE = 10.0


def under_ci() -> bool:
    """CI sets CI=true; there a missing server fails instead of skipping, so CI cannot skip silently."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_binary(name: str) -> str:
    """The path of the program ``name``; a missing one skips the test, or fails it under CI."""
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        reason = f"{name} is not installed (bash .ci/system-packages installs the interop servers)"
        if under_ci():
            pytest.fail(f"{reason}; under CI=true a missing server is a failure", pytrace=False)
        pytest.skip(reason)
    return path


def binary_version(argv: Sequence[str]) -> str:
    """The first line a program prints about its version (for reports and the README)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


@contextlib.contextmanager
def public_tempdir(prefix: str) -> Iterator[Path]:
    """A temp dir that user ``nobody`` can read (pytest's own tmp dirs are 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# The static tree every server serves


@dataclass(frozen=True)
class StaticFile:
    """One file of the static tree: its URL path, size and sha256 as written to disk."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StaticTree:
    """The files every server serves from ``root``, by URL path, plus a path nothing serves (404)."""

    root: Path
    files: Mapping[str, StaticFile]
    missing: str = "/no-such-file.bin"

    def __getitem__(self, path: str) -> StaticFile:
        return self.files[path]

    def on_disk(self, path: str) -> bytes:
        """The bytes of the file served at ``path``."""
        return (self.root / path.lstrip("/")).read_bytes()


# Binary files of every size the suite checks, and a compressible text that servers gzip.
BINARY_SIZES = {"/empty.bin": 0, "/1k.bin": 1024, "/100k.bin": 100 * 1024, "/10m.bin": 10 * 1024 * 1024}
TEXT_FILE = "/text.txt"


def make_static_tree(root: Path) -> StaticTree:
    """Write the static tree into ``root`` (readable by anyone) and describe it."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    contents: dict[str, bytes] = {}
    for path, size in BINARY_SIZES.items():
        # Seeded: the same bytes every run, and random enough that no server can compress them.
        contents[path] = random.Random(size).randbytes(size)
    words = [f"line {n}: the quick brown fox jumps over the lazy dog\n" for n in range(4000)]
    contents[TEXT_FILE] = "".join(words).encode()
    files = {}
    for path, data in contents.items():
        target = root / path.lstrip("/")
        target.write_bytes(data)
        target.chmod(0o644)
        files[path] = StaticFile(path, len(data), hashlib.sha256(data).hexdigest())
    return StaticTree(root, files)


# A redirect chain every server that can is configured with: /chain/3 -> /chain/2 -> /chain/1 -> /1k.bin
CHAIN = (("/chain/3", 301, "/chain/2"), ("/chain/2", 302, "/chain/1"), ("/chain/1", 307, "/1k.bin"))
CHAIN_START = "/chain/3"
CHAIN_END = "/1k.bin"
LOOP = "/loop"  # redirects to itself, for too_many_redirects


# ---------------------------------------------------------------------------------------------------
# Processes


class ServerFailed(RuntimeError):
    """A server exited, or did not listen, before it was ready; ``port_taken``: another program had its port."""

    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        self.port_taken = port_taken


def free_port() -> int:
    """A port nothing listens on now (bound to port 0, then closed); the server binds it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _listener_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (any local address, IPv4 or IPv6), from /proc/net."""
    inodes = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table_path, encoding="ascii") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def _group_holds(pgid: int, inodes: set[str]) -> bool:
    """Whether a process of process group ``pgid`` has one of the sockets ``inodes`` open."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    with os.scandir("/proc") as processes:
        pids = [int(entry.name) for entry in processes if entry.name.isdigit()]
    for pid in pids:
        try:
            if os.getpgid(pid) != pgid:
                continue
            with os.scandir(f"/proc/{pid}/fd") as fds:
                if any(os.readlink(fd.path) in targets for fd in fds):
                    return True
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return False


# A guard beside each server: when the test process is gone without stopping its servers (killed by a
# timeout, SIGTERM or SIGKILL: no fixture teardown runs then), it stops the server's whole process group.
# Watching our pid from outside is needed because servers that change user (squid, h2o) lose a
# parent-death signal set with prctl.
_WATCHDOG = """
import os, signal, sys, time
parent, group = int(sys.argv[1]), int(sys.argv[2])
def alive():
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
while os.getppid() == parent and alive():
    time.sleep(0.5)
if alive():
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        os.killpg(group, signal.SIGKILL)
"""


@dataclass
class ServerProcess:
    """A server child process (a session and process group of its own) and its combined log."""

    name: str
    argv: Sequence[str]
    port: int
    workdir: Path
    env: Mapping[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    watchdog: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        """Start the server and wait until it listens on its port; raises :class:`ServerFailed` if not."""
        environment = dict(os.environ)
        environment.update(self.env or {})
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=environment,
                start_new_session=True,
            )
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.process.pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_DEADLINE
        while True:
            if self.process.poll() is not None:
                log = self.log_tail()
                raise ServerFailed(
                    f"{self.name} exited ({self.process.returncode}) before listening:\n{log}",
                    port_taken="in use" in log.lower(),  # EADDRINUSE, in each server's words
                )
            inodes = _listener_inodes(self.port)
            if inodes:
                if not _group_holds(self.process.pid, inodes):
                    if self._accepts():  # someone else's listener may be closing; ours never came
                        raise ServerFailed(f"port {self.port} was taken by another program", port_taken=True)
                elif self._accepts():
                    return
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"{self.name} did not listen on {self.port} in {READY_DEADLINE} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and every process of its group: TERM, then KILL after a deadline."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_DEADLINE)
        # Whatever of the group is left (workers that outlive their master) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_DEADLINE)
        if self.watchdog is not None:  # it ends by itself once the group is gone
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(STOP_DEADLINE)
            if self.watchdog.poll() is None:
                self.watchdog.kill()
                self.watchdog.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_on_free_port(
    name: str,
    workdir: Path,
    configure: Callable[[int], Sequence[str]],
    *,
    env: Mapping[str, str] | None = None,
    attempts: int = 4,
) -> ServerProcess:
    """Start a server on a free port: ``configure(port)`` writes its config and returns its argv.

    A server that could not have its port (taken between our probe and its bind) is tried again on
    another; any other failure, or the last of those, is raised.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    failure: ServerFailed | None = None
    for _ in range(attempts):
        port = free_port()
        server = ServerProcess(name, configure(port), port, workdir, env)
        try:
            server.start()
        except ServerFailed as exc:
            if not exc.port_taken:
                raise
            failure = exc
            continue
        return server
    assert failure is not None
    raise failure


class Servers:
    """The servers started in this test session, stopped together at its end."""

    def __init__(self) -> None:
        self._started: list[ServerProcess] = []

    def add(self, server: ServerProcess) -> ServerProcess:
        self._started.append(server)
        return server

    def stop_all(self) -> None:
        while self._started:
            self._started.pop().stop()
