"""``--state FILE``: what the last complete response to each URL said, kept between runs.

    store = StateStore(Path("state.db"))   # opens and locks FILE (StateError if it cannot)
    store.start()                          # in the event loop: the store's thread begins
    lookup = store.lookup(url)             # asked now, answered with the rest of its chunk
    stored = await store.answer(lookup)    # a Stored, or None the first time
    store.update(lookup, record)           # what its response said: buffered, written with the next batch
    await store.aclose()                   # every buffered write committed, FILE unlocked

The file is an SQLite database in WAL mode, one row per URL: ETag, Last-Modified, SHA-256,
status, time and saved file of the last complete response (the ``validators`` table). Its key
is a 64-bit BLAKE2b digest of the URL (as ``--dedupe`` uses): rows stay small and fixed-size,
and two URLs collide with probability about n²/2⁶⁵ (one in 370,000 for 10 million URLs).

One thread owns the connection, and the event loop hands it work in batches only, so neither
the disk nor a thread switch is paid per URL:

- Lookups. :meth:`lookup` adds the URL's key to the chunk being filled and returns at once.
  A chunk goes to the thread when it is full, when the input has ended
  (:meth:`send_lookups`), or when a worker needs an answer from it before that (a slow
  input never waits for a chunk to fill). The thread answers a chunk with one
  ``SELECT ... IN`` and one wake-up of the loop. The engine asks when a request is read from
  the input, a thousand requests or so before a worker takes it, so the answer is there first.
- Writes. :meth:`remember` appends a row to a buffer, which goes to the thread
  ``_WRITE_DELAY`` after its first row or at ``_WRITE_ROWS`` rows, whichever comes first; the
  thread writes everything it has been given in one transaction (rows sorted by key, so
  neighbours in the B-tree are written together).

Durability. A commit in WAL mode with ``synchronous=NORMAL`` is in the operating system's
hands when it returns: a killed process (``kill -9``) loses only the updates not yet
committed, at most the last batch (``_WRITE_DELAY`` of updates, and the batch being written),
and SQLite's journal keeps the file consistent whatever the moment (a power cut may also lose
the last commits, never the file's consistency).

One run at a time: the run holds an exclusive ``flock`` on ``FILE.lock`` (released by the
system when the process ends, however it ends); a second run is refused with
:class:`StateError`, as is a file that is not an asyncfetch state database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asyncfetch.values import Value

if TYPE_CHECKING:
    from asyncfetch.record import Record

from asyncfetch.errors import StateError

# "afst" as a big-endian integer: SQLite's application_id marks the file as ours.
APPLICATION_ID = 0x61667374
SCHEMA_VERSION = 1
# Keys per chunk of lookups, and parameters per SELECT ... IN (...): well under SQLite's limit
# of 32766 (999 before 3.32).
_LOOKUP_CHUNK = 500
# A batch of writes goes to the thread this long after its first row (what a kill -9 may lose)...
_WRITE_DELAY = 0.05
# ... or once it holds this many rows (a bound on one transaction).
_WRITE_ROWS = 5_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS validators (
    key INTEGER PRIMARY KEY,     -- BLAKE2b-64 of the URL as requested (before redirects)
    etag TEXT,
    last_modified TEXT,
    sha256 BLOB,                 -- 32 bytes
    status INTEGER,
    fetched_at INTEGER,          -- Unix time in milliseconds
    saved_to TEXT                -- --save: the file holding this body
)
"""
_UPSERT = (
    "INSERT OR REPLACE INTO validators (key, etag, last_modified, sha256, status, fetched_at, saved_to)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Stored(Value):
    """What the last complete response to one URL said."""

    etag: str | None
    last_modified: str | None
    sha256: str | None  # hex
    status: int
    fetched_at: float  # Unix time
    saved_to: str | None = None


def url_key(url: str) -> int:
    """The row key of ``url``: its 64-bit BLAKE2b digest as a signed integer (SQLite's rowid)."""
    return int.from_bytes(hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8).digest(), signed=True)


_Row = tuple[int, str | None, str | None, bytes | None, int, int, str | None]


class Lookup:
    """One URL asked of the store: its key, and what was stored once the store's thread has answered."""

    __slots__ = ("_chunk", "key", "stored")

    def __init__(self, key: int, chunk: _Chunk) -> None:
        self.key = key
        self._chunk: _Chunk | None = chunk  # None once answered
        self.stored: Stored | None = None


class _Chunk:
    """Lookups sent to the thread together and answered together (one SELECT, one wake-up)."""

    __slots__ = ("answered", "lookups")

    def __init__(self, answered: asyncio.Future[None]) -> None:
        self.lookups: list[Lookup] = []
        self.answered = answered


class StateStore:
    """The state file of one run: opened and locked at construction, served by a thread of its own."""

    def __init__(self, path: Path, *, chunk: int = _LOOKUP_CHUNK) -> None:
        self.path = path
        self._chunk_size = max(1, min(chunk, _LOOKUP_CHUNK))
        self._lock_fd = _lock(path)
        try:
            self._db = _open(path)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._queue: queue.SimpleQueue[_Chunk | list[_Row] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Future[None] | None = None
        self._asking: _Chunk | None = None  # the chunk being filled, not yet sent
        self._rows: list[_Row] = []  # writes not yet sent
        self._send_timer: asyncio.TimerHandle | None = None
        self.error: StateError | None = None  # a write failed (disk full...): the run must stop

    def start(self) -> None:
        """Start the store's thread; call from the event loop that will ask it."""
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self._thread = threading.Thread(target=self._serve, name="asyncfetch-state", daemon=True)
        self._thread.start()

    def lookup(self, url: str) -> Lookup:
        """Ask what was stored for ``url``; :meth:`answer` gives it. Costs the loop a hash and an append."""
        chunk = self._asking
        if chunk is None:
            assert self._loop is not None, "start() the store first"
            chunk = self._asking = _Chunk(self._loop.create_future())
        lookup = Lookup(url_key(url), chunk)
        chunk.lookups.append(lookup)
        if len(chunk.lookups) >= self._chunk_size:
            self.send_lookups()
        return lookup

    def send_lookups(self) -> None:
        """Send the chunk being filled to the thread now (the input has ended, or a worker waits on it)."""
        chunk = self._asking
        if chunk is not None:
            self._asking = None
            self._queue.put(chunk)

    async def answer(self, lookup: Lookup) -> Stored | None:
        """What was stored for the URL of ``lookup`` (None: never seen, or the store failed)."""
        chunk = lookup._chunk  # the store's own handle
        if chunk is not None:
            if chunk is self._asking:
                self.send_lookups()  # needed now: not worth waiting for the chunk to fill
            # Shielded: a worker cancelled while waiting must not cancel the answer for the others.
            await asyncio.shield(chunk.answered)
        return lookup.stored

    def update(self, lookup: Lookup, record: Record) -> None:
        """Keep what the response of ``record`` said for its URL; a failure keeps the last good validators.

        Stored: every complete response below 500 other than 429. A response that confirms every
        stored field (a 304 that renews no validator, the same body with the same validators)
        writes nothing: the row still says what the response whose body it describes said, and
        when, and a nightly re-fetch of an unchanged list writes nothing at all.
        """
        status = record.status
        if record.error is not None or status is None or status >= 500 or status == 429:
            return
        stored = lookup.stored
        if status == 304 and stored is not None:
            # Not modified: the stored response still stands, with any validator the 304 renewed.
            status, sha256, saved_to = stored.status, stored.sha256, stored.saved_to
            etag = record.etag or stored.etag
            last_modified = record.last_modified or stored.last_modified
        else:
            sha256, saved_to = record.sha256, record.saved_to
            etag, last_modified = record.etag, record.last_modified
        if stored is not None and (etag, last_modified, sha256, status, saved_to) == (
            stored.etag,
            stored.last_modified,
            stored.sha256,
            stored.status,
            stored.saved_to,
        ):
            return
        self.remember(lookup, Stored(etag, last_modified, sha256, status, time.time(), saved_to))

    def remember(self, lookup: Lookup, stored: Stored) -> None:
        """Buffer ``stored`` as the latest for the URL of ``lookup``; raises :class:`StateError` once a write failed."""
        if self.error is not None:
            raise self.error
        sha = bytes.fromhex(stored.sha256) if stored.sha256 is not None else None
        rows = self._rows
        rows.append(
            (
                lookup.key,
                stored.etag,
                stored.last_modified,
                sha,
                stored.status,
                round(stored.fetched_at * 1000),
                stored.saved_to,
            )
        )
        if len(rows) >= _WRITE_ROWS:
            self._send_rows()
        elif self._send_timer is None:
            assert self._loop is not None, "start() the store first"
            self._send_timer = self._loop.call_later(_WRITE_DELAY, self._send_rows)

    def _send_rows(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._rows:
            self._queue.put(self._rows)
            self._rows = []

    async def aclose(self) -> None:
        """Commit what is buffered, close the database and release the lock."""
        if self._thread is not None and self._closed is not None:
            self.send_lookups()
            self._send_rows()
            self._queue.put(None)
            await asyncio.shield(self._closed)
            self._thread.join()
            self._thread = None
        else:
            self._db.close()
        self._unlock()
        if self.error is not None:
            raise self.error

    def close_unstarted(self) -> None:
        """Release a store that was never started (a run that never began)."""
        if self._thread is None:
            self._db.close()
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- the store's thread ------------------------------------------------------------------------
    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        stopping = False
        try:
            while not stopping:
                items = [self._queue.get()]
                with contextlib.suppress(queue.Empty):
                    while True:  # everything sent meanwhile: one answer callback, one transaction
                        items.append(self._queue.get_nowait())
                chunks: list[_Chunk] = []
                rows: list[_Row] = []
                for item in items:
                    if item is None:
                        stopping = True
                    elif isinstance(item, _Chunk):
                        chunks.append(item)
                    else:
                        rows += item
                try:
                    if chunks:
                        found = self._find([lookup.key for chunk in chunks for lookup in chunk.lookups])
                        # Answered before the write below: workers may be waiting, nobody waits on a write.
                        loop.call_soon_threadsafe(_answered, chunks, found)
                    if rows and self.error is None:
                        self._write(rows)
                except Exception as exc:  # noqa: BLE001  (a bug: say so, never leave a worker waiting on a lookup)
                    self.error = StateError(f"the state store of {self.path} failed: {exc!r}")
                    loop.call_soon_threadsafe(_answered, chunks, {})
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(_done, self._closed)

    def _find(self, keys: list[int]) -> dict[int, Stored]:
        found: dict[int, Stored] = {}
        unique = list(dict.fromkeys(keys))
        try:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                cursor = self._db.execute(
                    "SELECT key, etag, last_modified, sha256, status, fetched_at, saved_to"  # noqa: S608  (marks only)
                    f" FROM validators WHERE key IN ({marks})",
                    chunk,
                )
                for key, etag, modified, sha, status, fetched_at, saved_to in cursor:
                    found[key] = Stored(
                        etag, modified, sha.hex() if sha is not None else None, status, fetched_at / 1000, saved_to
                    )
        except sqlite3.Error as exc:
            self.error = StateError(f"cannot read the state file {self.path}: {exc}")
        return found

    def _write(self, rows: list[_Row]) -> None:
        db = self._db
        # Sorted by key (stable: the later of two rows for one URL still wins): rows that share a
        # page of the B-tree are written together.
        rows.sort(key=_row_key)
        try:
            db.execute("BEGIN")  # one transaction per batch: one commit shared by all its rows
            db.executemany(_UPSERT, rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.error = StateError(f"cannot write the state file {self.path}: {exc}")
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")


def _row_key(row: _Row) -> int:
    return row[0]


def _answered(chunks: list[_Chunk], found: dict[int, Stored]) -> None:
    """In the loop: each lookup of ``chunks`` gets its answer, then whoever waits on them wakes."""
    for chunk in chunks:
        for lookup in chunk.lookups:
            lookup.stored = found.get(lookup.key)
            lookup._chunk = None  # the store's own handle
        chunk.lookups = []
        if not chunk.answered.done():
            chunk.answered.set_result(None)


def _done(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _lock(path: Path) -> int:
    """An exclusive lock on ``FILE.lock``, held until the descriptor is closed (or the process ends)."""
    lock_path = Path(f"{path}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StateError(f"cannot use the state file {path}: {exc.strerror or exc} ({lock_path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateError(
            f"the state file {path} is in use by another asyncfetch run (one run at a time per state file)"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StateError(f"cannot lock the state file {path}: {exc.strerror or exc}") from None
    return fd


def _open(path: Path) -> sqlite3.Connection:
    """The database at ``path``, created if new, checked to be ours, in WAL mode."""
    try:
        # The thread that serves the store is not the one that opens it; only one uses it at a time.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StateError(f"cannot open the state file {path}: {exc}") from None
    try:
        problem = _prepare(db)
    except sqlite3.DatabaseError as exc:
        problem = f"not an asyncfetch state file ({exc})"
    except BaseException:
        db.close()
        raise
    if problem is not None:
        db.close()
        raise StateError(f"cannot use {path} as --state: {problem}")
    return db


def _prepare(db: sqlite3.Connection) -> str | None:
    """Check the database is ours (or empty: make it ours) and set it up; what is wrong, else None."""
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if application_id == 0:
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            return "an SQLite database, but not an asyncfetch state file"
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    elif application_id != APPLICATION_ID:
        return "an SQLite database, but not an asyncfetch state file"
    elif version > SCHEMA_VERSION:
        return f"written by a newer asyncfetch (state format {version})"
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(_SCHEMA)
    return None
