"""asyncfetch as a live child process for the black-box CLI tests: pipes read with deadlines.

``run_cli`` (conftest) covers runs that only need their final output. These helpers are for
the tests that act while the process runs: read its first lines, signal it, keep its standard
input open, or give it a terminal. Every read has a deadline, and every child is killed on the
way out, so a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

COMMAND = (sys.executable, "-m", "asyncfetch")
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``ASYNCFETCH_*`` variable, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ASYNCFETCH_")}
    env.update(extra or {})
    return env


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    """Write ``lines`` to ``path``, one per line, and return the path."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Finished:
    """How a child ended: its exit status (negative: killed by that signal) and all it wrote."""

    returncode: int
    stdout: bytes
    stderr: bytes


class Child:
    """A running ``python -m asyncfetch``; ``stdout`` is read through :meth:`line` and :meth:`finish`."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        stdin: int | IO[bytes] = subprocess.DEVNULL,
        stderr: int | IO[bytes] = subprocess.PIPE,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = COMMAND,
    ) -> None:
        self.process = subprocess.Popen(
            [*command, *args], stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, env=cli_env(env)
        )
        assert self.process.stdout is not None
        self._stdout_fd = self.process.stdout.fileno()
        self._read = b""  # every byte of stdout taken so far
        self._unread = b""  # of which not yet handed out as a line

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, data: bytes) -> None:
        """Write ``data`` to the child's standard input (a pipe) and flush it."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.stdin = None  # communicate() would flush it otherwise

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def line(self, timeout: float = 10.0) -> bytes:
        """The next whole line of stdout (with its newline); fails after ``timeout`` s or at its end."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._unread:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line on stdout within {timeout} s (have {self._unread!r})")
            ready, _, _ = select.select([self._stdout_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._stdout_fd, 65536)
            if not chunk:
                raise AssertionError(f"stdout ended before a whole line (have {self._unread!r})")
            self._read += chunk
            self._unread += chunk
        line, _, self._unread = self._unread.partition(b"\n")
        return line + b"\n"

    def close_stdout(self) -> None:
        """Close our end of the stdout pipe, as ``head -1`` does once it has its line."""
        assert self.process.stdout is not None
        self.process.stdout.close()

    def wait(self, timeout: float = 10.0) -> int:
        """The exit status, once the child has ended; fails (the child is killed) after ``timeout`` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"asyncfetch did not exit within {timeout} s") from None

    def finish(self, timeout: float = 10.0) -> Finished:
        """Wait for the end; everything written to stdout (lines already read included) and stderr."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"asyncfetch did not exit within {timeout} s") from None
        return Finished(self.process.returncode, self._read + (out or b""), err or b"")

    def kill(self) -> None:
        """SIGKILL the child if it still runs, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


@contextlib.contextmanager
def running(
    *args: str,
    stdin: int | IO[bytes] = subprocess.DEVNULL,
    stderr: int | IO[bytes] = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
) -> Iterator[Child]:
    """Start ``python -m asyncfetch ARGS``; the child is killed on the way out if it still runs."""
    child = Child(args, stdin=stdin, stderr=stderr, env=env)
    try:
        yield child
    finally:
        child.kill()
        for stream in (child.process.stdin, child.process.stdout, child.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass(frozen=True)
class TerminalRun:
    """A run whose stderr was a terminal: exit status, stdout (when a pipe) and what the terminal got."""

    returncode: int
    stdout: bytes
    terminal: bytes

    @property
    def terminal_text(self) -> str:
        """What the terminal received, escape sequences removed."""
        return _ANSI.sub(b"", self.terminal).decode("utf-8", "replace")


def open_terminal(columns: int = 120, rows: int = 40) -> tuple[int, int]:
    """A pseudo-terminal of the given size: (controller fd, terminal fd)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return controller, terminal


def run_on_terminal(
    *args: str, stdout_too: bool = False, env: Mapping[str, str] | None = None, timeout: float = 20.0
) -> TerminalRun:
    """Run the CLI with stdin empty and stderr a pseudo-terminal; stdout a pipe, or with ``stdout_too``
    the same terminal (a user who did not redirect anything). Collect what each received."""
    controller, terminal = open_terminal()
    extra = {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    extra.update(env or {})
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        extra.setdefault(name, "")
    environment = {name: value for name, value in cli_env(extra).items() if value != ""}
    try:
        process = subprocess.Popen(
            [*COMMAND, *args],
            stdin=subprocess.DEVNULL,
            stdout=terminal if stdout_too else subprocess.PIPE,
            stderr=terminal,
            env=environment,
        )
    finally:
        os.close(terminal)
    chunks: dict[int, list[bytes]] = {controller: []}
    if process.stdout is not None:
        chunks[process.stdout.fileno()] = []
    open_fds = list(chunks)
    deadline = time.monotonic() + timeout
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"asyncfetch did not finish within {timeout} s")
            ready, _, _ = select.select(open_fds, [], [], min(left, 0.5))
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the terminal has no process left on it
                    chunk = b""
                if chunk:
                    chunks[fd].append(chunk)
                else:
                    open_fds.remove(fd)
        returncode = process.wait(max(0.1, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        os.close(controller)
    stdout = b"".join(chunk for fd, parts in chunks.items() if fd != controller for chunk in parts)
    return TerminalRun(returncode, stdout, b"".join(chunks[controller]))


def wait_for(condition: str, check: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``check()`` until true; fail naming ``condition`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {condition}")
        time.sleep(0.02)
