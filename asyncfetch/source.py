"""The input stage: request lines from files and standard input, read lazily off the event loop.

A daemon thread reads each INPUT in 64 KB chunks (``os.read`` returns what a pipe has, so a
trickling producer's lines arrive one by one, and a file's arrive a thousand at a time),
splits lines, drops a UTF-8 BOM, CRs, blank lines and ``#`` comments, and hands batches to
the event loop. At most ``max_batches`` batches wait: the thread blocks, not the loop, and
memory stays flat however long the input is.

Gzip-compressed input is recognised by its first bytes (the gzip magic number), whatever its
name, standard input included, and inflated chunk by chunk. CSV and TSV input (``--csv``,
``--tsv``, or a name ending in ``.csv``/``.tsv``, optionally ``.gz``) is parsed by the ``csv``
module as RFC 4180 (quoted fields, embedded newlines): each row becomes a
:class:`~asyncfetch.spec.TableRow`, and a row that does not parse a row with a problem (an
``invalid_input`` record naming its line), so the run goes on.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import threading
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from asyncfetch.spec import TableRow
from asyncfetch.values import Value

_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_ROWS_PER_BATCH = 1000
STDIN = "-"

InputFormat = Literal["lines", "csv", "tsv"]
_DELIMITERS = {"csv": ",", "tsv": "\t"}


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RequestArgument(Value):
    """A request named on the command line itself (``asyncfetch https://example.com``): one line."""

    text: str


# An INPUT: a file's path, ``-`` for standard input, or a request given as an argument.
Input = str | RequestArgument


class InputError(Exception):
    """An INPUT that cannot be read: a usage error, reported before anything is fetched."""


def check_inputs(paths: Sequence[Input]) -> None:
    """Raise :class:`InputError` naming the first INPUT that does not exist or cannot be read."""
    for path in paths:
        if isinstance(path, RequestArgument) or path == STDIN:
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


def format_of(path: str, forced: InputFormat | None = None) -> InputFormat:
    """How an INPUT is read: as ``forced``, else by its name (``.csv``, ``.tsv``, with or without ``.gz``)."""
    if forced is not None:
        return forced
    name = path.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    return "lines"


InputItem = str | TableRow


class InputReader:
    """Async-iterates the requests of INPUTs (``-`` is standard input), in order.

    Lines (URLs, JSON request objects) are yielded as text; CSV and TSV rows as
    :class:`~asyncfetch.spec.TableRow`. ``input_format`` forces one format on every INPUT
    (``None``: by each name); ``url_column`` names the column holding the URL (default
    ``url``, matched without regard to case).
    """

    def __init__(
        self,
        paths: Sequence[Input],
        *,
        max_batches: int = 16,
        input_format: InputFormat | None = None,
        url_column: str | None = None,
    ) -> None:
        self._paths: list[Input] = list(paths) or [STDIN]
        self._format = input_format
        self._url_column = url_column
        self._batches: deque[list[InputItem] | BaseException | None] = deque()
        self._slots = threading.Semaphore(max_batches)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.lines_read = 0  # request lines handed over so far (for progress totals)
        self.finished = False  # every INPUT has been read to its end

    def __aiter__(self) -> AsyncIterator[InputItem]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[InputItem]:
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
                if isinstance(path, RequestArgument):
                    line = request_line(path.text)
                    if line is not None and not self._deliver(loop, [line]):
                        return
                elif not self._read_one(path, loop):
                    return
        except OSError as exc:
            self._deliver(loop, InputError(f"cannot read {exc.filename or 'input'}: {exc.strerror or exc}"))
            return
        except InputError as exc:
            self._deliver(loop, exc)
            return
        self._deliver(loop, None)

    def _read_one(self, path: str, loop: asyncio.AbstractEventLoop) -> bool:
        fd = 0 if path == STDIN else os.open(path, os.O_RDONLY)
        name = "standard input" if path == STDIN else path
        try:
            chunks = _without_bom(_inflated(_raw_chunks(fd, name), name))
            input_format = format_of(path, self._format)
            if input_format == "lines":
                return self._read_lines(chunks, loop)
            return self._read_table(chunks, _DELIMITERS[input_format], name, loop)
        finally:
            if fd != 0:
                os.close(fd)

    def _read_lines(self, chunks: Iterator[bytes], loop: asyncio.AbstractEventLoop) -> bool:
        pending = b""
        for chunk in chunks:
            data = pending + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                pending = data
                continue
            pending = data[cut + 1 :]
            lines: list[InputItem] = list(clean_lines(data[:cut]))
            if lines and not self._deliver(loop, lines):
                return False
        last: list[InputItem] = list(clean_lines(pending))
        return not last or self._deliver(loop, last)

    def _read_table(self, chunks: Iterator[bytes], delimiter: str, name: str, loop: asyncio.AbstractEventLoop) -> bool:
        import csv  # here: only tables need it

        reader = csv.reader(_text_lines(chunks), delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise InputError(f"{name}: line 1: the header does not parse: {exc}") from None
        if header is None:
            return True  # an empty file: no requests
        header = [column.strip() for column in header]
        wanted = (self._url_column or "url").strip().lower()
        found = [i for i, column in enumerate(header) if column.lower() == wanted]
        if not found:
            shown = ", ".join(header) if len(header) <= 20 else ", ".join(header[:20]) + ", ..."
            raise InputError(f"{name}: no column named {wanted!r} (columns: {shown}); choose one with --url-column")
        url_at = found[0]
        others = [(i, column) for i, column in enumerate(header) if i != url_at]
        width = len(header)
        batch: list[InputItem] = []
        line = reader.line_num
        while True:
            start = line + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                batch.append(TableRow("", None, f"{name} line {start}: not a {_FORMAT_NAMES[delimiter]} row: {exc}"))
                row = None
            line = reader.line_num
            if row is not None:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                if len(row) != width:
                    batch.append(
                        TableRow(
                            row[url_at].strip() if url_at < len(row) else "",
                            None,
                            f"{name} line {start}: {len(row)} fields where the header has {width}",
                        )
                    )
                else:
                    batch.append(TableRow(row[url_at], {column: row[i] for i, column in others}))
            if len(batch) >= _ROWS_PER_BATCH:
                if not self._deliver(loop, batch):
                    return False
                batch = []
        return not batch or self._deliver(loop, batch)

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[InputItem] | BaseException | None) -> bool:
        """Hand a batch to the loop, waiting for room; False once the reader was closed."""
        self._slots.acquire()
        if self._closed:
            return False
        try:
            loop.call_soon_threadsafe(self._arrive, batch)
        except RuntimeError:  # the loop is gone: nobody is reading any more
            return False
        return True

    def _arrive(self, batch: list[InputItem] | BaseException | None) -> None:
        self._batches.append(batch)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class LineReader(InputReader):
    """An :class:`InputReader` of request lines only (URLs and JSON objects; gzip inflated), whatever the names."""

    def __init__(self, paths: Sequence[Input], *, max_batches: int = 16) -> None:
        super().__init__(paths, max_batches=max_batches, input_format="lines")

    def __aiter__(self) -> AsyncIterator[str]:
        # Lines only: every item is text.
        return cast(AsyncIterator[str], super().__aiter__())


_FORMAT_NAMES = {",": "CSV", "\t": "TSV"}


def _raw_chunks(fd: int, name: str) -> Iterator[bytes]:
    """The bytes of ``fd`` as ``os.read`` gives them (a pipe's as they come), until its end."""
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except OSError as exc:
            exc.filename = name
            raise
        if not chunk:
            return
        yield chunk


def _inflated(chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
    """The chunks as they are, or inflated when the input starts with the gzip magic number.

    Concatenated gzip members (``cat a.gz b.gz``) are read one after the other. Output is
    bounded per step, so a small compressed input that inflates hugely stays flat in memory.
    """
    first = next(chunks, b"")
    while len(first) < len(_GZIP_MAGIC):  # a pipe may hand over a single byte first
        more = next(chunks, b"")
        if not more:
            break
        first += more
    if not first.startswith(_GZIP_MAGIC):
        if first:
            yield first
        yield from chunks
        return
    try:
        yield from _gunzip(first, chunks, name)
    except zlib.error as exc:
        raise InputError(f"cannot read {name}: not valid gzip data ({exc})") from None


def _gunzip(first: bytes, chunks: Iterator[bytes], name: str) -> Iterator[bytes]:
    limit = _CHUNK * 4
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    member_open = False
    data = first
    while True:
        while True:
            member_open = True
            out = inflater.decompress(data, limit)
            if out:
                yield out
            if inflater.eof:
                data = inflater.unused_data
                inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                member_open = False
                if data and not data.startswith(_GZIP_MAGIC[: len(data)]):
                    if data.strip(b"\0"):
                        raise InputError(f"cannot read {name}: bytes after the end of the gzip data")
                    data = b""  # zero padding after the last member (tape-style tools write it)
                if not data:
                    break
                continue
            data = inflater.unconsumed_tail
            if not data and len(out) < limit:
                break
        following = next(chunks, None)
        if following is None:
            break
        data = following
    if member_open:
        raise InputError(f"cannot read {name}: the gzip data is truncated")


def _without_bom(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks without a UTF-8 byte-order mark at the very start."""
    first = next(chunks, b"")
    yield first.removeprefix(_BOM)
    yield from chunks


def _text_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Decoded lines, line ends kept, for the ``csv`` module (which joins a quoted field's lines)."""
    pending = b""
    for chunk in chunks:
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        if not cut:
            pending = data
            continue
        pending = data[cut:]
        yield from io.StringIO(data[:cut].decode("utf-8", "replace"), newline="")
    if pending:
        yield from io.StringIO(pending.decode("utf-8", "replace"), newline="")


def estimate_total(paths: Sequence[Input]) -> int | None:
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
            if isinstance(path, RequestArgument):
                total += 1
                continue
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None
            with open(path, "rb") as file:
                if file.read(2) == _GZIP_MAGIC:
                    return None  # compressed: counting would mean inflating it all
                file.seek(0)
                if format_of(path) != "lines":
                    total -= 1  # the header row
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
