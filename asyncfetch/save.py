"""Body storage for ``--save DIR``: every complete body in its own file, always inside DIR.

Naming scheme (what a user finds in DIR)::

    http://example.com/                      DIR/example.com/index.html
    http://example.com/docs/                 DIR/example.com/docs/index.html
    https://Example.com/a/b/report.pdf       DIR/example.com/a/b/report.pdf
    http://127.0.0.1:8080/data.csv           DIR/127.0.0.1_8080/data.csv
    http://example.com/list.json?page=2      DIR/example.com/list@page=2.json
    http://example.com/caf%C3%A9             DIR/example.com/café
    http://bücher.example/x                  DIR/xn--bcher-kva.example/x
    the same name a second time              DIR/example.com/list@page=2-1.json, then -2, ...

- The first directory is the host (lower case, ASCII/punycode form), with ``_PORT`` when the
  URL names a port other than the scheme's default. User names and passwords never appear.
- Then one directory per path segment, percent-decoded; empty segments are skipped. A path
  ending in ``/`` (or empty) saves as ``index.html``; the fragment is ignored.
- A query is folded into the file name after ``@``, before the extension, so the file still
  opens with the right program (wget's Windows-safe ``@`` for ``?``).
- Each name is made safe on every common file system: control and invisible characters,
  ``/ \\ : * ? " < > |`` and bytes that are not UTF-8 become ``_``; trailing dots and spaces and
  leading spaces become ``_`` (so ``..`` is ``__``); Windows device names get a ``_`` prefix
  (``_con.txt``). Other Unicode is kept as sent.
- A name longer than the file system allows (NAME_MAX, minus room for a ``-N`` suffix) is
  shortened, keeping its start and its extension, and gets ``-`` and 10 hex digits of its
  SHA-256 so that distinct long names stay distinct. A path too deep (more than 32
  directories) or too long for PATH_MAX keeps its first directories and marks the file name
  with the digest of the whole path. A name the file system still refuses (ENAMETOOLONG,
  EILSEQ, EINVAL) becomes ``_`` and 10 hex digits, plus the extension.
- Collisions never overwrite: a file name already taken (by this run, a previous one, or
  anything else: a file, a directory, a symlink) gets ``-1``, ``-2``, ... before its
  extension; a directory name already taken by something that is not a directory (``a/b``
  saved as a file, then ``a/b/c``) gets ``-1``, ``-2``, ... too.

Safety. DIR is opened once; every directory below it is entered with ``openat(...,
O_NOFOLLOW | O_DIRECTORY)`` relative to its parent, so no symlink or ``..`` inside DIR is ever
followed and no path string outside DIR is ever built. A body is written to an unnamed file
(``O_TMPFILE``, Linux) or to a hidden temporary ``.asyncfetch-*.part`` file created with
``O_EXCL`` in the target directory; :meth:`BodyFile.commit` gives it its final name with
``link()``, which fails rather than replace anything (then the next suffix is tried), and
:meth:`BodyFile.discard` leaves nothing behind. Bodies under 64 KiB stay in memory until
commit, so a body cut short by ``--max-size`` or an error usually costs no system call at all
(a larger one may leave the empty directories made for it). There is no fsync: a power cut
may lose bodies saved just before it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import weakref
from collections import OrderedDict
from pathlib import Path
from urllib.parse import unquote_to_bytes

import httpx

from asyncfetch.errors import ErrorKind, FetchError
from asyncfetch.sinks import write_all

# Directories under the host directory, at most; deeper URLs are folded (see the docstring).
MAX_DEPTH = 32
# Room kept in each name for a collision suffix (``-N``) and in PATH_MAX for the same per level.
_SUFFIX_ROOM = 16
# Smaller writes are gathered up to this size; a smaller body is only written at commit.
_BUFFER = 64 * 1024
# Directory file descriptors kept open between bodies (each saves a walk from DIR).
_OPEN_DIRECTORIES = 64
# Names whose collision counter is remembered, so the 1000th copy does not try 1000 names.
_COUNTERS = 4096
# Attempts at one file name before giving up (only a file system that lies could need more).
_MAX_TRIES = 100_000
# Alternatives tried for a directory name taken by files, symlinks or unreadable directories.
_MAX_DIRECTORY_TRIES = 1000

_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0)
_DIRECTORY_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
_UNNAMED_FLAGS = _O_TMPFILE | os.O_WRONLY | _O_CLOEXEC

# Something that is not a directory (a file, a symlink: ELOOP, or EMLINK on FreeBSD) holds the name.
_NOT_A_DIRECTORY = frozenset({errno.ENOTDIR, errno.ELOOP, errno.EMLINK, errno.EACCES})
# The file system refuses the name itself: fall back to a short ASCII one.
_NAME_REFUSED = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ})
# The file system cannot make hard links: reserve the name, then rename onto the reservation.
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV})

_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f-\x9f"*/:<>?\\|]')
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{n}" for device in ("COM", "LPT") for n in "0123456789¹²³"}
)


class SaveError(FetchError):
    """A body could not be written to DIR (a full disk, a read-only one, a permission).

    A failure of this request's storage, not of the run: its record carries error kind ``save``
    and the run goes on (a later body may be smaller, or bound for another directory).
    """

    def __init__(self, where: str, error: OSError) -> None:
        super().__init__(ErrorKind.SAVE, f"cannot write body in {where}: {error.strerror or error}")


class BodyFile:
    """One body being saved: held in memory, then in a temporary file, until it is named.

    Call :meth:`write` for each piece, then exactly one of :meth:`commit` (the body is
    complete: returns the path it was saved to) or :meth:`discard` (nothing stays on disk).
    """

    __slots__ = ("_buffer", "_directory", "_done", "_fd", "_key", "_leaf", "_saver", "_temp")

    def __init__(self, saver: BodySaver, key: tuple[str, ...], leaf: str) -> None:
        self._saver = saver
        self._key = key
        self._leaf = leaf
        self._buffer = bytearray()
        self._directory: _Directory | None = None
        self._fd = -1
        self._temp: str | None = None  # the temporary name, when the file has one
        self._done = False

    @property
    def location(self) -> str:
        """The directory this body is bound for, as DIR was given (for messages)."""
        return os.path.join(self._saver._display, *self._key)

    def write(self, data: bytes) -> None:
        """Append ``data`` to the body."""
        if self._done:
            raise ValueError("write to a body already committed or discarded")
        buffer = self._buffer
        if len(buffer) + len(data) < _BUFFER:
            buffer += data
            return
        fd = self._open()
        if buffer:
            write_all(fd, buffer)
            buffer.clear()
        write_all(fd, data)

    def commit(self) -> str:
        """Give the complete body its final name (never replacing a file); return its path."""
        if self._done:
            raise ValueError("commit of a body already committed or discarded")
        try:
            fd = self._open()
            if self._buffer:
                write_all(fd, self._buffer)
                self._buffer = bytearray()
            directory = self._directory
            assert directory is not None
            name = self._saver._name(directory, self._leaf, fd, self._temp)
            self._temp = None  # linked (and unlinked) or renamed: no temporary name left
        finally:
            self._release()
        return os.path.join(self._saver._display, directory.path, name)

    def discard(self) -> None:
        """Forget the body: no file, temporary or final, remains. Harmless if already done."""
        if not self._done:
            self._release()

    def _open(self) -> int:
        """The temporary file, created (with its directories) on first use."""
        if self._fd >= 0:
            return self._fd
        saver = self._saver
        directory = saver._acquire(self._key)
        self._directory = directory
        try:
            self._fd, self._temp = saver._create(directory)
        except OSError:
            if directory is saver._root or os.fstat(directory.fd).st_nlink:
                raise  # not a directory removed behind our back
            # Removed since it was opened (and its parents perhaps too): find or make it again, once.
            saver._forget_all()
            saver._release(directory)
            self._directory = None
            directory = saver._acquire(self._key)
            self._directory = directory
            self._fd, self._temp = saver._create(directory)
        return self._fd

    def _release(self) -> None:
        """Close and remove whatever this body still holds."""
        self._done = True
        self._buffer = bytearray()
        directory, self._directory = self._directory, None
        fd, self._fd = self._fd, -1
        temp, self._temp = self._temp, None
        try:
            if fd >= 0:
                os.close(fd)
            if temp is not None and directory is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=directory.fd)
        finally:
            if directory is not None:
                self._saver._release(directory)


class BodySaver:
    """Names and creates the files of ``--save DIR``; see the module docstring for the scheme.

        saver = BodySaver(Path("downloads"))
        body = saver.start(httpx.URL("https://example.com/a.pdf"), 0)
        body.write(b"%PDF...")
        body.commit()   # 'downloads/example.com/a.pdf'

    ``unnamed_temp=False`` writes bodies to named temporary files even where the system
    offers unnamed ones (``O_TMPFILE``, Linux; with it a killed run leaves no temporary file).
    """

    def __init__(self, directory: Path | str, *, unnamed_temp: bool = True) -> None:
        if not {os.open, os.mkdir, os.link, os.unlink} <= os.supports_dir_fd or not _O_NOFOLLOW:
            raise NotImplementedError("--save needs a system with openat() and O_NOFOLLOW (POSIX)")
        self._display = os.fspath(directory)
        Path(directory).mkdir(parents=True, exist_ok=True)
        root = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        self._root = _Directory(root, "")
        self._cache: OrderedDict[tuple[str, ...], _Directory] = OrderedDict()
        self._finalizer = weakref.finalize(self, _close_all, self._cache, self._root)
        self._counters: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._temp_prefix = f".asyncfetch-{os.getpid()}-{secrets.token_hex(4)}-"
        self._temp_count = 0
        self._name_max = _limit(root, "PC_NAME_MAX", 255)
        path_max = _limit(root, "PC_PATH_MAX", 4096)
        # Bytes left for "host/dirs/file" once DIR's absolute path, a slash and the final NUL are counted.
        self._budget = path_max - len(os.fsencode(os.path.abspath(directory))) - 2
        self._unnamed = unnamed_temp and _unnamed_files_work(root, self._temp_prefix)
        if not self._unnamed:
            try:
                _check_writable(root, self._temp_prefix)
            except OSError:
                self._finalizer()
                raise

    @property
    def directory(self) -> str:
        """DIR, as given."""
        return self._display

    def start(self, url: httpx.URL, index: int) -> BodyFile:
        """A new body for ``url`` (``index`` is the request's; names depend on the URL alone)."""
        del index
        key, leaf = plan(url, name_max=self._name_max, budget=self._budget)
        return BodyFile(self, key, leaf)

    def close(self) -> None:
        """Release the directories held open, once no body is in progress (none can start after it)."""
        self._finalizer()

    # -- directories -----------------------------------------------------------------------------
    def _acquire(self, key: tuple[str, ...]) -> _Directory:
        """The directory planned as ``key`` (found or made, never through a symlink), held open."""
        if not self._finalizer.alive:
            raise ValueError("the saver is closed")
        if not key:
            directory = self._root
        else:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                directory = cached
            else:
                directory = self._walk(key)
                self._cache[key] = directory
                if len(self._cache) > _OPEN_DIRECTORIES:
                    _, oldest = self._cache.popitem(last=False)
                    oldest.cached = False
                    if not oldest.users:
                        os.close(oldest.fd)
        directory.users += 1
        return directory

    def _release(self, directory: _Directory) -> None:
        directory.users -= 1
        if not directory.users and not directory.cached:
            os.close(directory.fd)

    def _forget_all(self) -> None:
        """Drop every cached directory (each is closed once its last user releases it)."""
        _close_all(self._cache)

    def _walk(self, key: tuple[str, ...]) -> _Directory:
        # Start from the deepest directory already open (usually the host's).
        start, parent = 0, self._root
        for depth in range(len(key) - 1, 0, -1):
            cached = self._cache.get(key[:depth])
            if cached is not None:
                start, parent = depth, cached
                break
        fd, path, opened = parent.fd, parent.path, -1
        try:
            for planned in key[start:]:
                name, fd = _enter(fd, planned)
                if opened >= 0:
                    os.close(opened)
                opened = fd
                path = f"{path}/{name}" if path else name
        except BaseException:
            if opened >= 0:
                os.close(opened)
            raise
        return _Directory(opened, path)

    # -- files -----------------------------------------------------------------------------------
    def _create(self, directory: _Directory) -> tuple[int, str | None]:
        """A new empty temporary file in ``directory``: its descriptor and name (None: unnamed)."""
        if self._unnamed:
            try:
                return os.open(".", _UNNAMED_FLAGS, 0o666, dir_fd=directory.fd), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
                    raise
                # A file system without O_TMPFILE mounted below DIR: named files there.
        for _ in range(_MAX_TRIES):
            self._temp_count += 1
            temp = f"{self._temp_prefix}{self._temp_count}.part"
            try:
                return os.open(temp, _TEMP_FLAGS, 0o666, dir_fd=directory.fd), temp
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", directory.path)

    def _name(self, directory: _Directory, leaf: str, fd: int, temp: str | None) -> str:
        """Link the temporary file to the first free name derived from ``leaf``; return that name."""
        dir_fd = directory.fd
        base = leaf
        counter_key = (directory.path, leaf)
        number = self._counters.get(counter_key, 0)
        links = True
        for _ in range(_MAX_TRIES):
            name = _numbered(base, number)
            try:
                if temp is None:
                    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
                elif links:
                    os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                    os.unlink(temp, dir_fd=dir_fd)
                else:
                    # Reserve the name (O_EXCL: never an existing file), then move the body onto it.
                    os.close(os.open(name, _TEMP_FLAGS, 0o666, dir_fd=dir_fd))
                    try:
                        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    except BaseException:
                        os.unlink(name, dir_fd=dir_fd)
                        raise
            except FileExistsError:
                number += 1
                continue
            except OSError as exc:
                if exc.errno in _NAME_REFUSED and base != _short(leaf):
                    base, number = _short(leaf), 0
                    continue
                if temp is not None and links and exc.errno in _NO_LINKS:
                    links = False
                    continue
                raise
            if number:
                self._counters[counter_key] = number
                self._counters.move_to_end(counter_key)
                if len(self._counters) > _COUNTERS:
                    self._counters.popitem(last=False)
            return name
        raise FileExistsError(errno.EEXIST, "no free name", os.path.join(directory.path, leaf))


class _Directory:
    """An open directory inside DIR: its descriptor, its path relative to DIR, who uses it."""

    __slots__ = ("cached", "fd", "path", "users")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.users = 0
        self.cached = True


def plan(url: httpx.URL, *, name_max: int = 255, budget: int = 4000) -> tuple[tuple[str, ...], str]:
    """Where ``url``'s body goes before collisions: the directory names under DIR and the file name.

    Every name is safe (see the module docstring) and at most ``name_max - 16`` UTF-8 bytes;
    the whole relative path, with room for collision suffixes, fits in ``budget`` bytes.
    """
    limit = max(name_max - _SUFFIX_ROOM, 24)
    host = url.raw_host.decode("ascii", "surrogateescape").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6: [::1] reads better than ::1 once the colons become _
    if url.port is not None:
        host = f"{host}_{url.port}"
    host = _fit(_clean(host) or "_", limit)
    raw_path, _, raw_query = url.raw_path.partition(b"?")
    segments = [_decode(s) for s in raw_path.split(b"/") if s]
    if segments and not raw_path.endswith(b"/"):
        leaf = _clean(segments.pop())
    else:
        leaf = "index.html"
    directories = [_fit(_clean(s), limit) for s in segments]
    if raw_query:
        stem, extension = _split_extension(leaf)
        leaf = f"{stem}@{_clean(_decode(raw_query))}{extension}"
    fitted = _fit(leaf, limit)
    names = [host, *directories, fitted]
    if len(directories) <= MAX_DEPTH and _path_size(names) <= budget:
        return (host, *directories), fitted
    # Too deep or too long: keep the first directories that fit, mark the file with the whole path.
    tag = _digest(url.raw_path)
    fitted = _fit(leaf, limit, tag=tag)
    del directories[MAX_DEPTH:]
    while directories and _path_size([host, *directories, fitted]) > budget:
        directories.pop()
    if _path_size([host, fitted]) <= budget:
        return (host, *directories), fitted
    # DIR itself is nearly PATH_MAX long: the shortest name there is, right in DIR.
    return (), _fit(leaf, max(min(limit, budget - _SUFFIX_ROOM), 12), tag=tag)


def _decode(raw: bytes) -> str:
    """Percent-decoded text; bytes that are not UTF-8 become lone surrogates (cleaned to ``_``)."""
    return unquote_to_bytes(raw).decode("utf-8", "surrogateescape")


def _clean(text: str) -> str:
    """``text`` as one safe file name component (possibly empty)."""
    if not text.isascii():
        text = "".join(c if c.isprintable() else "_" for c in text)
    text = _FORBIDDEN.sub("_", text)
    # Windows drops trailing dots and spaces; names of dots only would be "." and "..".
    kept = text.rstrip(". ")
    if len(kept) < len(text):
        text = kept + "_" * (len(text) - len(kept))
    if text.startswith(" "):
        body = text.lstrip(" ")
        text = "_" * (len(text) - len(body)) + body
    if text.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        text = "_" + text
    return text


def _split_extension(name: str) -> tuple[str, str]:
    """``("report", ".pdf")``; no extension for ``.hidden``, long or odd suffixes."""
    dot = name.rfind(".")
    if dot <= 0 or len(name) - dot > 16 or not name[dot + 1 :].isalnum():
        return name, ""
    return name[:dot], name[dot:]


def _fit(name: str, limit: int, *, tag: str | None = None) -> str:
    """``name`` in at most ``limit`` UTF-8 bytes; a shortened (or ``tag``-ged) name ends ``-TAG.ext``."""
    if tag is None:
        if len(name.encode()) <= limit:
            return name
        tag = _digest(name.encode())
    stem, extension = _split_extension(name)
    room = limit - len(extension.encode()) - len(tag) - 1
    if room < 1:
        stem, extension, room = "", "", limit - len(tag) - 1
    stem = stem.encode()[: max(room, 0)].decode("utf-8", "ignore")
    return f"{stem}-{tag}{extension}" if stem else f"{tag}{extension}"


def _short(name: str) -> str:
    """A short ASCII stand-in for a name the file system refused."""
    extension = _split_extension(name)[1]
    if not extension.isascii():
        extension = ""
    return f"_{_digest(name.encode())}{extension}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:10]


def _numbered(name: str, number: int) -> str:
    """``name``, or its ``number``-th alternative: ``report-2.pdf``."""
    if not number:
        return name
    stem, extension = _split_extension(name)
    return f"{stem}-{number}{extension}"


def _path_size(names: list[str]) -> int:
    return sum(len(name.encode()) + 1 + _SUFFIX_ROOM for name in names)


def _enter(parent: int, planned: str) -> tuple[str, int]:
    """Open the directory ``planned`` in ``parent`` (made if need be), or its first usable alternative."""
    base, number = planned, 0
    for _ in range(_MAX_DIRECTORY_TRIES):
        name = f"{base}-{number}" if number else base  # a directory has no extension to keep last
        try:
            return name, os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno in _NOT_A_DIRECTORY:
                number += 1
                continue
            if exc.errno in _NAME_REFUSED and base != _short(planned):
                base, number = _short(planned), 0
                continue
            raise
        try:
            os.mkdir(name, 0o777, dir_fd=parent)
        except FileExistsError:
            pass  # made meanwhile: the next open tells what it is
        except OSError as exc:
            if exc.errno in _NAME_REFUSED and base != _short(planned):
                base, number = _short(planned), 0
                continue
            raise
    raise FileExistsError(errno.EEXIST, "no usable directory name", planned)


def _limit(fd: int, name: str, default: int) -> int:
    """A file system limit (NAME_MAX, PATH_MAX) for DIR, never above the usual Linux value."""
    try:
        value = os.fpathconf(fd, name)
    except (OSError, ValueError):
        return default
    return min(value, default) if value > 0 else default


def _unnamed_files_work(root: int, prefix: str) -> bool:
    """Whether DIR takes unnamed files (O_TMPFILE) that can later be linked through /proc."""
    if not _O_TMPFILE or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        fd = os.open(".", _UNNAMED_FLAGS, 0o600, dir_fd=root)
    except OSError:
        return False
    probe = f"{prefix}probe"
    try:
        os.link(f"/proc/self/fd/{fd}", probe, dst_dir_fd=root, follow_symlinks=True)
        os.unlink(probe, dir_fd=root)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _check_writable(root: int, prefix: str) -> None:
    """Raise the OSError (read-only file system, permission) that would fail every body in DIR."""
    probe = f"{prefix}probe"
    os.close(os.open(probe, _TEMP_FLAGS, 0o600, dir_fd=root))
    os.unlink(probe, dir_fd=root)


def _close_all(cache: OrderedDict[tuple[str, ...], _Directory], root: _Directory | None = None) -> None:
    """Uncache the directories (and ``root``): close those idle now, the others on their last release."""
    for directory in [*cache.values(), *([root] if root is not None else [])]:
        directory.cached = False
        if not directory.users:
            os.close(directory.fd)
    cache.clear()
