"""The input stage: request lines from files and standard input, read lazily off the event loop.

A daemon thread reads each INPUT in 64 KB chunks (``os.read`` returns what a pipe has, so a
trickling producer's lines arrive one by one, and a file's arrive a thousand at a time),
splits lines, drops a UTF-8 BOM, CRs, blank lines and ``#`` comments, and hands batches to
the event loop. At most ``max_batches`` batches wait: the thread blocks, not the loop, and
memory stays flat however long the input is.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence

_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"
STDIN = "-"


class InputError(Exception):
    """An INPUT that cannot be read: a usage error, reported before anything is fetched."""


def check_inputs(paths: Sequence[str]) -> None:
    """Raise :class:`InputError` naming the first INPUT that does not exist or cannot be read."""
    for path in paths:
        if path == STDIN:
            continue
        try:
            info = os.stat(path)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"cannot read {path}: it is a directory")
        if not os.access(path, os.R_OK):
            raise InputError(f"cannot read {path}: permission denied")


def request_line(text: str) -> str | None:
    """``text`` as a request line: stripped, without a byte-order mark; None for a blank or ``#`` line."""
    line = text.strip()
    if line.startswith("\ufeff"):
        line = line[1:].strip()
    if not line or line[0] == "#":
        return None
    return line


def clean_lines(data: bytes) -> list[str]:
    """The request lines in ``data``, decoded (see :func:`request_line`)."""
    lines = []
    for raw in data.split(b"\n"):
        line = request_line(raw.decode("utf-8", "replace"))
        if line is not None:
            lines.append(line)
    return lines


class LineReader:
    """Async-iterates the request lines of INPUTs (``-`` is standard input), in order."""

    def __init__(self, paths: Sequence[str], *, max_batches: int = 16) -> None:
        self._paths = list(paths) or [STDIN]
        self._batches: deque[list[str] | BaseException | None] = deque()
        self._slots = threading.Semaphore(max_batches)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.lines_read = 0  # request lines handed over so far (for progress totals)
        self.finished = False  # every INPUT has been read to its end

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        thread = threading.Thread(target=self._read_all, args=(loop,), name="asyncfetch-input", daemon=True)
        thread.start()
        try:
            while True:
                if not self._batches:
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
                    continue
                batch = self._batches.popleft()
                self._slots.release()
                if batch is None:
                    self.finished = True
                    return
                if isinstance(batch, BaseException):
                    raise batch
                self.lines_read += len(batch)
                for line in batch:
                    yield line
        finally:
            self._closed = True
            self._slots.release()  # a thread waiting for room sees _closed and ends

    # -- in the reader thread ------------------------------------------------------------------
    def _read_all(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for path in self._paths:
                if not self._read_one(path, loop):
                    return
        except OSError as exc:
            self._deliver(loop, InputError(f"cannot read {exc.filename or 'input'}: {exc.strerror or exc}"))
            return
        self._deliver(loop, None)

    def _read_one(self, path: str, loop: asyncio.AbstractEventLoop) -> bool:
        fd = 0 if path == STDIN else os.open(path, os.O_RDONLY)
        try:
            pending = b""
            first = True
            while True:
                try:
                    chunk = os.read(fd, _CHUNK)
                except OSError as exc:
                    exc.filename = "standard input" if path == STDIN else path
                    raise
                if first:
                    first = False
                    if chunk.startswith(_BOM):
                        chunk = chunk[len(_BOM) :]
                if not chunk:
                    break
                data = pending + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    pending = data
                    continue
                pending = data[cut + 1 :]
                lines = clean_lines(data[:cut])
                if lines and not self._deliver(loop, lines):
                    return False
            lines = clean_lines(pending)
            return not lines or self._deliver(loop, lines)
        finally:
            if fd != 0:
                os.close(fd)

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[str] | BaseException | None) -> bool:
        """Hand a batch to the loop, waiting for room; False once the reader was closed."""
        self._slots.acquire()
        if self._closed:
            return False
        try:
            loop.call_soon_threadsafe(self._arrive, batch)
        except RuntimeError:  # the loop is gone: nobody is reading any more
            return False
        return True

    def _arrive(self, batch: list[str] | BaseException | None) -> None:
        self._batches.append(batch)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def estimate_total(paths: Sequence[str]) -> int | None:
    """How many request lines the INPUTs hold, counted fast; None unless all are regular files.

    Lines are counted by their newlines, less those that plainly start blank or with ``#``
    (a run of blank lines or a line of spaces can slip through): an estimate for the progress
    bar, which takes the exact count once reading ends. Runs in a thread, off the event loop.
    """
    if not paths or any(p == STDIN for p in paths):
        return None
    total = 0
    try:
        for path in paths:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None
            with open(path, "rb") as file:
                last = b"\n"  # a virtual newline before the first line
                while chunk := file.read(1 << 20):
                    data = last + chunk
                    total += chunk.count(b"\n") - data.count(b"\n\n") - data.count(b"\n#") - data.count(b"\n\r\n")
                    last = chunk[-1:]
                if last != b"\n":
                    total += 1  # a last line without its newline
    except OSError:
        return None
    return max(total, 0)
