"""``--resume``: find which requests an earlier run already recorded, and repair its last line.

A run killed mid-write can leave a torn last line; it is cut off first (the file is
truncated after its last newline). Then each record's ``index`` and ``url`` are read, and
only a compact digest is kept: 8 bytes per index in an array (8 MB per million records, never
the records themselves), so a file of millions of records resumes in flat memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from array import array

from asyncfetch.dedupe import url_digest

_CHUNK = 1 << 20
# Records come in completion order, close to input order: an index this far beyond what the
# file holds is not one the engine wrote.
_MAX_GAP = 10_000_000
# The engine writes "url" then "index" first: a cheap match avoids parsing whole records.
_HEAD = re.compile(rb'^\{"url":("(?:[^"\\]|\\.)*"),"index":(\d+)[,}]')


class DoneSet:
    """Which (index, url) pairs have a record; built by :func:`scan_output`."""

    def __init__(self) -> None:
        self._digests = array("Q")
        self.count = 0

    def add(self, index: int, url: str) -> None:
        if not 0 <= index <= 2 * self.count + _MAX_GAP:
            return  # not a record of ours (a hand-edited or corrupted line must not cost gigabytes)
        digests = self._digests
        if index >= len(digests):
            digests.frombytes(bytes(8 * max(index + 1 - len(digests), len(digests) // 2 + 1024)))
        if not digests[index]:
            self.count += 1
        digests[index] = url_digest(url)

    def __call__(self, index: int, url: str) -> bool:
        """True if request ``index`` for ``url`` already has a record (the engine's ``skip``)."""
        digests = self._digests
        return index < len(digests) and digests[index] != 0 and digests[index] == url_digest(url)

    @property
    def memory_bytes(self) -> int:
        return self._digests.itemsize * len(self._digests)


def scan_output(path: str) -> DoneSet:
    """The requests recorded in ``path``, after cutting a torn last line off the file.

    A missing file is an empty run. Lines that are not records are ignored.
    """
    done = DoneSet()
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return done
    try:
        _cut_fd_tail(fd)
        with os.fdopen(os.dup(fd), "rb") as file:
            for line in file:
                _note(done, line)
    finally:
        os.close(fd)
    return done


def _note(done: DoneSet, line: bytes) -> None:
    match = _HEAD.match(line)
    if match is not None:
        quoted = match.group(1)
        with contextlib.suppress(ValueError):
            # Most URLs carry no JSON escapes: their text is the bytes between the quotes.
            url = json.loads(quoted) if b"\\" in quoted else quoted[1:-1].decode("utf-8")
            done.add(int(match.group(2)), url)
        return
    try:
        value = json.loads(line)
    except ValueError:
        return
    if isinstance(value, dict) and isinstance(value.get("url"), str) and type(value.get("index")) is int:
        done.add(value["index"], value["url"])


def cut_torn_tail(path: str) -> None:
    """Truncate ``path`` just after its last newline: a killed writer's partial line goes."""
    fd = os.open(path, os.O_RDWR)
    try:
        _cut_fd_tail(fd)
    finally:
        os.close(fd)


def _cut_fd_tail(fd: int) -> None:
    """Truncate the file just after its last newline (a killed writer's partial line goes)."""
    size = os.fstat(fd).st_size
    position = size
    while position > 0:
        start = max(0, position - _CHUNK)
        block = os.pread(fd, position - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            if end != size:
                os.ftruncate(fd, end)
            return
        position = start
    if size:
        os.ftruncate(fd, 0)  # not one complete line
