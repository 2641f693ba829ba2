"""The sinks stage: JSON lines to a file descriptor, whole and promptly.

Records completed in one turn of the event loop go out in one ``write`` of whole lines at the
end of that turn: a reader (``tail -f``, ``jq``, a later ``--resume``) never sees half a line
from us, and a record reaches the kernel within microseconds of completing. Writes bypass
``sys.stdout``: nothing of ours is ever buffered in Python where a crash could lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import stat
import threading
from collections.abc import Callable


class LineWriter:
    """Batches lines within a loop turn and writes them to ``fd`` with a single syscall each turn."""

    def __init__(self, fd: int, *, on_closed: Callable[[], None] | None = None) -> None:
        """Made inside the running loop it writes for."""
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._scheduled = False
        self._on_closed = on_closed
        self.lines_written = 0
        self.error: OSError | None = None
        if on_closed is not None:
            self._watch_reader()

    def _watch_reader(self) -> None:
        """On a pipe or socket, notice the reader leaving (``| head -1``) now, not at the next write.

        A thread waits in poll() for POLLERR/POLLHUP only; the loop's own add_reader is not used
        because uvloop would switch the descriptor, shared with other processes, to non-blocking.
        """
        try:
            mode = os.fstat(self._fd).st_mode
        except OSError:
            return
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return
        threading.Thread(target=self._wait_for_hangup, name="asyncfetch-stdout", daemon=True).start()

    def _wait_for_hangup(self) -> None:
        poller = select.poll()
        poller.register(self._fd, 0)  # no event asked for: poll() returns on error or hang-up only
        while True:
            events = poller.poll()
            if any(flags & (select.POLLERR | select.POLLHUP) for _, flags in events):
                break
            if any(flags & select.POLLNVAL for _, flags in events):
                return  # the descriptor was closed: the run is over
        with contextlib.suppress(RuntimeError):  # the loop is gone: nothing left to stop
            self._loop.call_soon_threadsafe(self._reader_gone)

    def _reader_gone(self) -> None:
        if self._on_closed is not None:
            self._on_closed()

    def write(self, line: bytes) -> None:
        """Queue one complete line (ending in a newline) for this loop turn's write.

        Raises the error of an earlier write that failed (a full disk, say).
        """
        if self.error is not None:
            raise self.error
        self._pending.append(line)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued line now; a failure is kept in :attr:`error`."""
        self._scheduled = False
        if not self._pending or self.error is not None:
            return
        data = b"".join(self._pending)
        count = len(self._pending)
        self._pending.clear()
        try:
            write_all(self._fd, data)
        except OSError as exc:
            if exc.errno == errno.EPIPE and self._on_closed is not None:
                self._on_closed()  # the reader is gone (| head -1): the caller ends the process
            self.error = exc
            return
        self.lines_written += count


def write_all(fd: int, data: bytes | bytearray) -> None:
    """``os.write`` until every byte is out (a signal can cut a write short)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            # A descriptor someone else left non-blocking: wait for room, as a blocking write would.
            select.select([], [fd], [])
            continue
        view = view[written:]
