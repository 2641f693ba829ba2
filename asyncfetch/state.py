"""``--state FILE``: what the last complete response to each URL said, kept between runs.

    store = StateStore(Path("state.db"))   # opens and locks FILE (StateError if it cannot)
    store.start()                          # in the event loop: the store's thread begins
    stored = await store.lookup(url)       # a Stored, or None the first time
    store.remember(url, Stored(...))       # queued; written in the next batch
    await store.aclose()                   # every queued write committed, FILE unlocked

The file is an SQLite database in WAL mode, one row per URL: ETag, Last-Modified, SHA-256,
status, time and saved file of the last complete response (the ``validators`` table). Its key
is a 64-bit BLAKE2b digest of the URL (as ``--dedupe`` uses): rows stay small and fixed-size,
and two URLs collide with probability about n²/2⁶⁵ (one in 370,000 for 10 million URLs).

One thread owns the connection. The event loop only puts requests on its queue; the thread
takes everything queued at once, answers the lookups with one ``SELECT ... IN`` per 500 keys
and writes the rows in one transaction, so the loop never waits on the disk and the cost of a
commit is shared by every update that arrived meanwhile. Lookups are asked for when a request
is read from the input, long before a worker takes it, so the answer is there when it is needed.

Durability. A commit in WAL mode with ``synchronous=NORMAL`` is in the operating system's
hands when it returns: a killed process (``kill -9``) loses only the updates not yet
committed, at most the last batch, and SQLite's journal keeps the file consistent whatever
the moment (a power cut may also lose the last commits, never the file's consistency).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# "afst" as a big-endian integer: SQLite's application_id marks the file as ours.
APPLICATION_ID = 0x61667374
SCHEMA_VERSION = 1
# Parameters per SELECT ... IN (...): well under SQLite's limit of 32766 (999 before 3.32).
_LOOKUP_CHUNK = 500
# Queue items taken in one batch at most: bounds one transaction and one answer callback.
_BATCH = 20_000

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


class StateError(Exception):
    """The state file cannot be used (not ours, in use by another run, unwritable): a usage error."""


@dataclass(frozen=True, slots=True)
class Stored:
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


_Lookup = tuple[int, "asyncio.Future[Stored | None]"]
_Row = tuple[int, str | None, str | None, bytes | None, int, int, str | None]


class StateStore:
    """The state file of one run: opened and locked at construction, served by a thread of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd = _lock(path)
        try:
            self._db = _open(path)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Future[None] | None = None
        self.error: StateError | None = None  # a write failed (disk full...): the run must stop

    def start(self) -> None:
        """Start the store's thread; call from the event loop that will ask it."""
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self._thread = threading.Thread(target=self._serve, name="asyncfetch-state", daemon=True)
        self._thread.start()

    def lookup(self, url: str) -> asyncio.Future[Stored | None]:
        """What was stored for ``url`` (None: never seen, or the store failed), answered by the thread."""
        assert self._loop is not None, "start() the store first"
        future: asyncio.Future[Stored | None] = self._loop.create_future()
        self._queue.put(("get", (url_key(url), future)))
        return future

    def remember(self, url: str, stored: Stored) -> None:
        """Queue ``stored`` as the latest for ``url``; raises :class:`StateError` once a write has failed."""
        if self.error is not None:
            raise self.error
        sha = bytes.fromhex(stored.sha256) if stored.sha256 is not None else None
        row: _Row = (
            url_key(url),
            stored.etag,
            stored.last_modified,
            sha,
            stored.status,
            round(stored.fetched_at * 1000),
            stored.saved_to,
        )
        self._queue.put(("put", row))

    async def aclose(self) -> None:
        """Commit what is queued, close the database and release the lock."""
        if self._thread is not None and self._closed is not None:
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
                    while len(items) < _BATCH:
                        items.append(self._queue.get_nowait())
                lookups: list[_Lookup] = []
                rows: list[_Row] = []
                for item in items:
                    if item is None:
                        stopping = True
                    elif item[0] == "get":
                        lookups.append(item[1])
                    else:
                        rows.append(item[1])
                try:
                    answers = self._answer(lookups) if lookups else []
                    if rows and self.error is None:
                        self._write(rows)
                except Exception as exc:  # noqa: BLE001  (a bug: say so, never leave a worker waiting on a lookup)
                    self.error = StateError(f"the state store of {self.path} failed: {exc!r}")
                    answers = [(future, None) for _, future in lookups]
                if answers:
                    loop.call_soon_threadsafe(_resolve, answers)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(_done, self._closed)

    def _answer(self, lookups: list[_Lookup]) -> list[tuple[asyncio.Future[Stored | None], Stored | None]]:
        found: dict[int, Stored] = {}
        keys = list({key for key, _ in lookups})
        try:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
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
        return [(future, found.get(key)) for key, future in lookups]

    def _write(self, rows: list[_Row]) -> None:
        db = self._db
        try:
            db.execute("BEGIN")  # one transaction per batch: one commit shared by all its rows
            db.executemany(_UPSERT, rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.error = StateError(f"cannot write the state file {self.path}: {exc}")
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")


def _resolve(answers: list[tuple[asyncio.Future[Stored | None], Stored | None]]) -> None:
    for future, stored in answers:
        if not future.done():
            future.set_result(stored)


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
