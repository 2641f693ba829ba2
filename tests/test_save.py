"""``--save DIR``: the naming scheme, confinement to DIR, collisions, and nothing left on failure."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncfetch.errors import ErrorKind
from asyncfetch.save import BodySaver, plan
from tests.conftest import collect, records_of, run_cli
from tests.server import TestServer

pytestmark = pytest.mark.anyio

NAME_MAX = 255
PATH_MAX = 4096

HOSTILE_URLS = [
    "http://h/../../x",
    "http://h/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "http://h/%2E%2E/%2e%2E/",
    "http://h/..%2f..%2f..%2fetc%2fpasswd",
    "http://h/..%5c..%5cwindows%5cwin.ini",
    "http://h/..\\..\\x",
    "http://h/a\\b/..\\..\\..\\c",
    "http://h/%00",
    "http://h/a%00b/c%00",
    "http://h/%2F",
    "http://h/%2F%2F%2Fetc",
    "http://h/%01%02%1f%7f%c2%85%c2%a0",
    "http://h/%ff%fe%fd",
    "http://h/%C0%AE%C0%AE/%C0%AF",
    "http://h/%E2%80%AEfdp.exe",
    "http://h/%ED%A0%80",
    "http://h/CON",
    "http://h/nul.txt",
    "http://h/com1/lpt9.log",
    "http://h/AUX%20.txt",
    "http://h/.",
    "http://h/%2e",
    "http://h/...",
    "http://h/..../....",
    "http://h/a./b%20",
    "http://h/" + "a" * 1000,
    "http://h/" + "%C3%A9" * 400 + ".txt",
    "http://h/" + "/".join(["seg"] * 600),
    "http://h/" + "/".join(["x" * 250] * 40) + "/file.bin",
    "http://h/a?" + "q=" + "z" * 5000,
    "http://h/a?x=../../../../etc/passwd",
    "http://h/a?x=%2F..%2F..%2F%00%ff",
    "http://h/?",
    "http://h/" + "%25" * 300,
    "http://h:65535/" + "b" * 254,
    "http://[::1]:8080/x",
    "http://user:secret@h/x",
    "http://bücher.example/ü",
    "http://h/.asyncfetch-1-abc-1.part",
]


@pytest.fixture
def save_dir(tmp_path: Path) -> Path:
    """DIR, one level below a directory that nothing may be written to but DIR."""
    return tmp_path / "out"


@pytest.fixture(params=[True, False], ids=["unnamed-temp", "named-temp"])
def saver(request: pytest.FixtureRequest, save_dir: Path) -> Iterator[BodySaver]:
    """A saver in each temporary-file mode (O_TMPFILE where the system has it, and named files)."""
    running = BodySaver(save_dir, unnamed_temp=request.param)
    yield running
    running.close()


def save(saver: BodySaver, url: str | httpx.URL, content: bytes = b"body", *, chunk: int = 0) -> Path:
    """Save ``content`` as the body of ``url``; the path that commit reports."""
    body = saver.start(httpx.URL(url), 0)
    step = chunk or max(len(content), 1)
    for start in range(0, len(content), step):
        body.write(content[start : start + step])
    return Path(body.commit())


def entries(root: Path) -> list[Path]:
    """Everything below ``root`` that is not a directory (files, symlinks, hidden or not)."""
    return sorted(
        Path(top, name)
        for top, dirs, files in os.walk(root)
        for name in files + [d for d in dirs if Path(top, d).is_symlink()]
    )


def assert_inside(path: Path, root: Path) -> None:
    """``path`` is a regular file inside ``root`` once every symlink is resolved, within name limits."""
    resolved = path.resolve(strict=True)
    assert resolved.is_relative_to(root.resolve()), f"{path} escapes {root}"
    assert resolved.is_file()
    assert not path.is_symlink()
    assert all(len(os.fsencode(part)) <= NAME_MAX for part in resolved.parts)
    assert len(os.fsencode(resolved)) < PATH_MAX


# -- the naming scheme ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "relative"),
    [
        ("http://example.com", "example.com/index.html"),
        ("http://example.com/", "example.com/index.html"),
        ("http://example.com/docs/", "example.com/docs/index.html"),
        ("https://Example.COM/a/b/report.pdf", "example.com/a/b/report.pdf"),
        ("http://example.com:80/x", "example.com/x"),
        ("http://127.0.0.1:8080/data.csv", "127.0.0.1_8080/data.csv"),
        ("http://example.com/list.json?page=2", "example.com/list@page=2.json"),
        ("http://example.com/search?q=a%20b", "example.com/search@q=a b"),
        ("http://example.com/?q=1", "example.com/index@q=1.html"),
        ("http://example.com/a//b", "example.com/a/b"),
        ("http://example.com/caf%C3%A9.txt", "example.com/café.txt"),
        ("http://bücher.example/x", "xn--bcher-kva.example/x"),
        ("http://example.com/a%2Fb", "example.com/a_b"),
        ("http://example.com/%2e%2e/x", "example.com/__/x"),
        ("http://example.com/con.txt", "example.com/_con.txt"),
        ("http://example.com/x#fragment", "example.com/x"),
        ("http://user:pw@example.com/x", "example.com/x"),
    ],
)
def test_names_follow_the_documented_scheme(saver: BodySaver, save_dir: Path, url: str, relative: str) -> None:
    """A body lands at DIR/host[_port]/decoded path segments, with index.html and @query as documented."""
    assert save(saver, url) == save_dir / relative


def test_saved_to_starts_with_dir_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path commit returns begins with DIR spelt as the user gave it, relative or not."""
    monkeypatch.chdir(tmp_path)
    saver = BodySaver("downloads/")
    path = saver.start(httpx.URL("http://h/x"), 0)
    path.write(b"1")
    assert path.commit() == os.path.join("downloads", "h", "x")
    saver.close()


def test_long_names_are_shortened_but_stay_distinct(saver: BodySaver, save_dir: Path) -> None:
    """Names past NAME_MAX keep their start and extension and differ by a digest of the full name."""
    first = save(saver, "http://h/" + "a" * 300 + "1.pdf")
    second = save(saver, "http://h/" + "a" * 300 + "2.pdf")
    assert first != second
    for path in (first, second):
        assert path.name.startswith("aaaa")
        assert path.suffix == ".pdf"
        assert len(os.fsencode(path.name)) <= NAME_MAX - 16
        assert path.parent == save_dir / "h"


def test_a_small_name_max_is_respected() -> None:
    """On a file system with a shorter NAME_MAX (eCryptfs: 143) every planned name fits it."""
    url = httpx.URL("http://h/" + "/".join(["é" * 100] * 3) + "?" + "q" * 400)
    directories, leaf = plan(url, name_max=143)
    assert all(len(name.encode()) <= 143 - 16 for name in (*directories, leaf))


def test_deep_paths_are_folded_to_a_bounded_depth(saver: BodySaver, save_dir: Path) -> None:
    """A URL hundreds of segments deep is saved at most 33 directories below DIR, under its own name."""
    deep_a = save(saver, "http://h/" + "d/" * 500 + "a.txt")
    deep_b = save(saver, "http://h/" + "d/" * 400 + "e/" * 100 + "a.txt")
    assert deep_a != deep_b
    for path in (deep_a, deep_b):
        assert len(path.relative_to(save_dir).parts) <= 1 + 32 + 1
        assert path.suffix == ".txt"


@pytest.mark.parametrize("depth", [2900, 3500, 3990])
def test_paths_fit_path_max_under_a_long_dir(tmp_path: Path, depth: int) -> None:
    """Even when DIR's own path is long, every saved path stays below PATH_MAX and opens by name."""
    directory = tmp_path
    while len(os.fsencode(directory)) < depth - 200:
        directory /= "d" * 200
    directory /= "e" * (depth - len(os.fsencode(directory)) - 1)
    saver = BodySaver(directory)
    urls = [
        "http://h/" + "a" * 3000,
        "http://h/" + "/".join(["b" * 200] * 30) + "/file.bin",
        "http://h/" + "c/" * 300,
        "http://" + "h" * 63 + ".example:8080/" + "x" * 250 + "?" + "y" * 3000,
    ]
    saved = [save(saver, url, url.encode()) for url in urls]
    assert len(set(saved)) == len(urls)
    for url, path in zip(urls, saved, strict=True):
        assert_inside(path, directory)
        assert path.read_bytes() == url.encode()
    saver.close()


# -- confinement ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", HOSTILE_URLS, ids=range(len(HOSTILE_URLS)))
def test_hostile_urls_stay_inside_dir(saver: BodySaver, save_dir: Path, tmp_path: Path, url: str) -> None:
    """No URL (dot segments, encoded separators, NUL, odd bytes, device names, huge names) leaves DIR."""
    content = url.encode()
    path = save(saver, url, content)
    assert_inside(path, save_dir)
    assert path.read_bytes() == content
    assert "secret" not in str(path)
    assert str(path).encode("utf-8")  # a valid JSON string: no lone surrogates
    assert sorted(tmp_path.iterdir()) == [save_dir]


def test_every_hostile_url_gets_its_own_file(saver: BodySaver, save_dir: Path) -> None:
    """Saved one after another into the same DIR, all hostile URLs keep distinct files and contents."""
    saved = {url: save(saver, url, url.encode()) for url in HOSTILE_URLS}
    assert len(set(saved.values())) == len(HOSTILE_URLS)
    for url, path in saved.items():
        assert_inside(path, save_dir)
        assert path.read_bytes() == url.encode()
    assert len(entries(save_dir)) == len(HOSTILE_URLS)


def test_a_symlinked_host_directory_is_not_followed(saver: BodySaver, save_dir: Path, tmp_path: Path) -> None:
    """A symlink planted where the host directory goes does not lead the write out of DIR."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (save_dir / "h").symlink_to(outside, target_is_directory=True)
    path = save(saver, "http://h/x/y")
    assert_inside(path, save_dir)
    assert path == save_dir / "h-1" / "x" / "y"
    assert list(outside.iterdir()) == []


def test_a_symlinked_inner_directory_is_not_followed(saver: BodySaver, save_dir: Path, tmp_path: Path) -> None:
    """A symlink planted as an inner directory (even one pointing back inside DIR) is never entered."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (save_dir / "h" / "a").mkdir(parents=True)
    (save_dir / "h" / "a" / "b").symlink_to(outside, target_is_directory=True)
    (save_dir / "h" / "a" / "up").symlink_to(save_dir, target_is_directory=True)
    path = save(saver, "http://h/a/b/c")
    assert_inside(path, save_dir)
    assert list(outside.iterdir()) == []
    looped = save(saver, "http://h/a/up/h/a/x")
    assert looped == save_dir / "h" / "a" / "up-1" / "h" / "a" / "x"


def test_a_symlink_at_the_file_name_is_neither_followed_nor_replaced(
    saver: BodySaver, save_dir: Path, tmp_path: Path
) -> None:
    """A symlink planted at the final name (to a file outside, or dangling) is left alone."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (save_dir / "h").mkdir(parents=True)
    (save_dir / "h" / "x").symlink_to(victim)
    (save_dir / "h" / "y").symlink_to(tmp_path / "created-through-symlink")
    first = save(saver, "http://h/x", b"new")
    second = save(saver, "http://h/y", b"new")
    assert first == save_dir / "h" / "x-1"
    assert second == save_dir / "h" / "y-1"
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "created-through-symlink").exists()
    assert (save_dir / "h" / "x").is_symlink()


def test_dir_itself_may_be_a_symlink(tmp_path: Path) -> None:
    """DIR given as a symlink is the user's choice: bodies go where it points."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    saver = BodySaver(tmp_path / "link")
    path = save(saver, "http://h/x")
    assert (real / "h" / "x").read_bytes() == b"body"
    assert path == tmp_path / "link" / "h" / "x"
    saver.close()


# -- collisions -----------------------------------------------------------------------------------


def test_the_same_url_twice_gets_two_files(saver: BodySaver, save_dir: Path) -> None:
    """Saving one URL twice keeps both bodies, the second with a -1 before the extension."""
    first = save(saver, "http://h/a.txt", b"one")
    second = save(saver, "http://h/a.txt", b"two")
    third = save(saver, "http://h/a.txt", b"three")
    assert [first.name, second.name, third.name] == ["a.txt", "a-1.txt", "a-2.txt"]
    assert [p.read_bytes() for p in (first, second, third)] == [b"one", b"two", b"three"]


def test_bodies_in_flight_together_get_distinct_files(saver: BodySaver) -> None:
    """Two bodies for the same name written at once are both kept, each with its own content."""
    first = saver.start(httpx.URL("http://h/same"), 0)
    second = saver.start(httpx.URL("http://h/same"), 1)
    first.write(b"1" * 100_000)
    second.write(b"2" * 100_000)
    paths = [Path(second.commit()), Path(first.commit())]
    assert paths[0] != paths[1]
    assert paths[0].read_bytes() == b"2" * 100_000
    assert paths[1].read_bytes() == b"1" * 100_000


def test_a_file_where_a_directory_is_needed(saver: BodySaver, save_dir: Path) -> None:
    """``a/b`` saved as a file, then ``a/b/c``: the second goes to a numbered directory, both kept."""
    file = save(saver, "http://h/a/b", b"file")
    nested = save(saver, "http://h/a/b/c", b"nested")
    assert file == save_dir / "h" / "a" / "b"
    assert nested == save_dir / "h" / "a" / "b-1" / "c"
    assert file.read_bytes() == b"file"
    assert nested.read_bytes() == b"nested"


def test_a_directory_where_a_file_is_needed(saver: BodySaver, save_dir: Path) -> None:
    """``a/b/c`` saved first, then ``a/b``: the file takes a numbered name beside the directory."""
    nested = save(saver, "http://h/a/b/c", b"nested")
    file = save(saver, "http://h/a/b", b"file")
    assert nested == save_dir / "h" / "a" / "b" / "c"
    assert file == save_dir / "h" / "a" / "b-1"
    assert file.read_bytes() == b"file"


def test_names_that_differ_only_in_replaced_characters(saver: BodySaver) -> None:
    """URLs whose names clean to the same text (``a:b``, ``a*b``, ``a%3Fb``, ``a_b``) keep distinct files."""
    urls = ["http://h/a:b", "http://h/a*b", "http://h/a%3Fb", "http://h/a_b", "http://h/a%00b"]
    saved = [save(saver, url, url.encode()) for url in urls]
    assert len(set(saved)) == len(urls)
    assert [p.read_bytes() for p in saved] == [u.encode() for u in urls]


def test_files_of_an_earlier_run_are_never_overwritten(save_dir: Path) -> None:
    """A second run saving the same URLs into the same DIR leaves the first run's files intact."""
    first_run = BodySaver(save_dir)
    old = [save(first_run, f"http://h/f{i}.txt", b"old") for i in range(3)]
    first_run.close()
    second_run = BodySaver(save_dir, unnamed_temp=False)
    new = [save(second_run, f"http://h/f{i}.txt", b"new") for i in range(3)]
    second_run.close()
    assert all(p.read_bytes() == b"old" for p in old)
    assert all(p.read_bytes() == b"new" for p in new)
    assert {p.name for p in new} == {"f0-1.txt", "f1-1.txt", "f2-1.txt"}


def test_many_copies_of_one_name_are_numbered_in_order(saver: BodySaver, save_dir: Path) -> None:
    """The n-th copy of a name is ``name-n``: the collision counter is remembered, not rediscovered."""
    names = [save(saver, "http://h/x.bin", b"%d" % i).name for i in range(50)]
    assert names == ["x.bin"] + [f"x-{i}.bin" for i in range(1, 50)]
    assert len(entries(save_dir)) == 50


def test_without_hard_links_names_are_still_never_overwritten(save_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system refuses hard links, commit reserves a free name and renames onto it."""
    (save_dir / "h").mkdir(parents=True)
    (save_dir / "h" / "x").write_bytes(b"existing")
    saver = BodySaver(save_dir, unnamed_temp=False)

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first = save(saver, "http://h/x", b"a" * 100_000)
    second = save(saver, "http://h/x", b"b")
    assert (save_dir / "h" / "x").read_bytes() == b"existing"
    assert first.read_bytes() == b"a" * 100_000
    assert second.read_bytes() == b"b"
    assert len(entries(save_dir)) == 3
    saver.close()


def test_names_the_file_system_refuses_fall_back_to_short_ones(
    saver: BodySaver, save_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses a name (ENAMETOOLONG, EILSEQ) gets a short ASCII name instead."""
    real_link, real_mkdir = os.link, os.mkdir

    def refuse(name: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        if len(os.fsencode(name)) > 20:
            raise OSError(errno.ENAMETOOLONG, "File name too long", name)

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        refuse(dst)
        real_link(src, dst, **kwargs)

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        refuse(path)
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "mkdir", mkdir)
    path = save(saver, "http://h/" + "d" * 30 + "/" + "f" * 30 + ".txt", b"short")
    assert path.read_bytes() == b"short"
    assert path.suffix == ".txt"
    assert all(len(part) <= 20 for part in path.relative_to(save_dir).parts)


def test_a_directory_removed_mid_run_is_made_again(saver: BodySaver, save_dir: Path) -> None:
    """If someone removes directories the saver had open, the next bodies in them recreate them."""
    save(saver, "http://h/a/one")
    (save_dir / "h" / "a" / "one").unlink()
    (save_dir / "h" / "a").rmdir()
    path = save(saver, "http://h/a/two", b"two")
    assert path == save_dir / "h" / "a" / "two"
    assert path.read_bytes() == b"two"
    shutil.rmtree(save_dir / "h")
    path = save(saver, "http://h/a/three", b"three")
    assert path == save_dir / "h" / "a" / "three"
    assert path.read_bytes() == b"three"


def test_a_closed_saver_starts_no_file(save_dir: Path) -> None:
    """After close(), a body that would need a new file raises instead of using a stale descriptor."""
    saver = BodySaver(save_dir)
    body = saver.start(httpx.URL("http://h/x"), 0)
    saver.close()
    with pytest.raises(ValueError):
        body.commit()
    assert entries(save_dir) == []


# -- commit and discard ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "chunk"), [(0, 0), (1, 0), (65_535, 1000), (65_536, 0), (300_000, 7_000)])
def test_commit_saves_exactly_what_was_written(saver: BodySaver, save_dir: Path, size: int, chunk: int) -> None:
    """The committed file inside DIR holds exactly the bytes written, and no temporary file remains."""
    content = os.urandom(size)
    path = save(saver, "http://h/f", content, chunk=chunk)
    assert_inside(path, save_dir)
    assert path.read_bytes() == content
    assert entries(save_dir) == [path]


@pytest.mark.parametrize("size", [10, 65_536, 1_000_000])
def test_discard_leaves_no_file(saver: BodySaver, save_dir: Path, size: int) -> None:
    """A discarded body leaves no file at all in DIR: neither its final name nor a temporary one."""
    body = saver.start(httpx.URL("http://h/dir/f"), 0)
    for _ in range(3):
        body.write(b"x" * size)
    body.discard()
    body.discard()  # twice is harmless (the worker may discard after a failed commit)
    assert entries(save_dir) == []


def test_discard_after_other_commits_keeps_only_the_committed(saver: BodySaver, save_dir: Path) -> None:
    """Interleaved with committed bodies in the same directory, a discarded one leaves nothing."""
    kept = saver.start(httpx.URL("http://h/f"), 0)
    dropped = saver.start(httpx.URL("http://h/f"), 1)
    kept.write(b"k" * 100_000)
    dropped.write(b"d" * 100_000)
    dropped.discard()
    path = Path(kept.commit())
    assert entries(save_dir) == [path]
    assert path.name == "f"


def test_a_finished_body_takes_no_more_writes(saver: BodySaver) -> None:
    """Writing to or committing a body that was already committed or discarded is a bug, raised loudly."""
    body = saver.start(httpx.URL("http://h/f"), 0)
    body.commit()
    with pytest.raises(ValueError):
        body.write(b"late")
    with pytest.raises(ValueError):
        body.commit()
    body.discard()


def test_unnamed_temporary_files_are_used_where_available(save_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux, a body being written has no name in DIR at all (a killed run leaves no temp file)."""
    if not hasattr(os, "O_TMPFILE"):
        pytest.skip("O_TMPFILE is Linux-only")
    saver = BodySaver(save_dir)
    body = saver.start(httpx.URL("http://h/f"), 0)
    body.write(b"x" * 1_000_000)
    assert entries(save_dir) == []
    body.commit()
    assert len(entries(save_dir)) == 1
    saver.close()


# -- end to end through asyncfetch.fetch ---------------------------------------------------------


async def test_fetch_saves_each_body_where_saved_to_says(server: TestServer, tmp_path: Path) -> None:
    """Through fetch(save_dir=...), each record's saved_to names a file in DIR whose sha256 is the record's."""
    save_dir = tmp_path / "out"
    urls = [server.url("/bytes/10"), server.url("/bytes/200000"), server.url("/ok"), server.url("/redirect/2")]
    records = await collect(urls, save_dir=save_dir, retries=0)
    host = f"127.0.0.1_{server.port}"
    by_url = {r.url: r for r in records}
    expected = {
        urls[0]: save_dir / host / "bytes" / "10",
        urls[1]: save_dir / host / "bytes" / "200000",
        urls[2]: save_dir / host / "ok",
        urls[3]: save_dir / host / "redirect" / "0",  # named after the final URL
    }
    for url, path in expected.items():
        record = by_url[url]
        assert record.error is None
        assert record.saved_to == str(path)
        content = Path(record.saved_to).read_bytes()
        assert len(content) == record.size
        assert hashlib.sha256(content).hexdigest() == record.sha256
        assert_inside(path, save_dir)
    assert len(entries(save_dir)) == 4
    assert by_url[urls[3]].to_json()  # saved_to is part of the JSON line


async def test_fetch_saves_a_repeated_url_twice(server: TestServer, tmp_path: Path) -> None:
    """The same URL requested twice in one run is saved to two distinct files."""
    save_dir = tmp_path / "out"
    records = await collect([server.url("/bytes/1000")] * 2, save_dir=save_dir)
    saved = {r.saved_to for r in records}
    assert len(saved) == 2
    assert all(r.saved_to is not None and Path(r.saved_to).stat().st_size == 1000 for r in records)


@pytest.mark.parametrize(("size", "max_size"), [(10_000, 100), (1_000_000, 200_000)])
async def test_a_too_large_body_leaves_no_file(server: TestServer, tmp_path: Path, size: int, max_size: int) -> None:
    """A body cut by max_size is an error record without saved_to, and nothing is left in DIR."""
    save_dir = tmp_path / "out"
    [record] = await collect([server.url(f"/bytes/{size}")], save_dir=save_dir, max_size=max_size)
    assert record.error is not None
    assert record.error.kind == ErrorKind.TOO_LARGE
    assert record.saved_to is None
    assert "saved_to" not in record.to_json()
    assert entries(save_dir) == []


async def test_a_body_cut_by_an_error_leaves_no_file(server: TestServer, tmp_path: Path) -> None:
    """A body interrupted by the deadline mid-transfer leaves no file, final or temporary."""
    save_dir = tmp_path / "out"
    [record] = await collect([server.url("/drip/50?interval=0.05")], save_dir=save_dir, timeout=0.5, retries=0)
    assert record.error is not None
    assert record.error.kind == ErrorKind.TIMEOUT
    assert record.saved_to is None
    assert entries(save_dir) == []


# -- local failures: a full or read-only disk ---------------------------------------------------------


def _mount_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs of our own at ``where`` (root only: chmod does not stop root, a mount does)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: the disk-failure tests must run there, not be skipped")
        pytest.skip("needs root to mount a small or read-only tmpfs (chmod does not bind root)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB file system: room for a few small bodies, not for eight of 20 KB."""
    yield from _mount_tmpfs(tmp_path / "small", "size=64k")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory on a read-only file system."""
    yield from _mount_tmpfs(tmp_path / "ro", "ro,size=64k")


async def test_a_body_that_does_not_fit_on_the_disk_is_a_save_record_and_the_run_goes_on(
    server: TestServer, full_disk: Path
) -> None:
    """On a full disk every request still gets its record: saved ones, then save errors naming the problem."""
    urls = [server.url(f"/bytes/20000?i={i}") for i in range(8)]
    records = sorted(await collect(urls, save_dir=full_disk, concurrency=1, retries=2), key=lambda r: r.index)
    assert [r.index for r in records] == list(range(8))
    saved = [r for r in records if r.error is None]
    failed = [r for r in records if r.error is not None]
    assert saved
    assert failed
    assert all(r.saved_to is not None and Path(r.saved_to).stat().st_size == 20_000 for r in saved)
    for record in failed:
        assert record.error is not None
        assert record.error.kind is ErrorKind.SAVE
        assert record.error.message.startswith("cannot write body in ")
        assert record.error.message.endswith(": No space left on device")
        assert (record.status, record.saved_to, record.sha256, record.attempts) == (200, None, None, 1)
        assert not record.ok


async def test_a_read_only_directory_under_dir_fails_only_its_bodies(fresh_server: TestServer, tmp_path: Path) -> None:
    """Bodies bound for a read-only part of DIR are save errors; bodies for the rest of DIR are saved."""
    save_dir = tmp_path / "out"
    host_dir = save_dir / f"127.0.0.1_{fresh_server.port}"
    for _ in _mount_tmpfs(host_dir, "ro,size=64k"):
        records = await collect(
            [fresh_server.url("/bytes/10"), f"http://localhost:{fresh_server.port}/bytes/10"], save_dir=save_dir
        )
    by_host = {httpx.URL(r.url).host: r for r in records}
    blocked, fine = by_host["127.0.0.1"], by_host["localhost"]
    assert blocked.error is not None
    assert blocked.error.kind is ErrorKind.SAVE
    assert blocked.error.message.endswith(": Read-only file system")
    assert fine.error is None
    assert fine.saved_to is not None


async def test_a_dir_that_cannot_be_written_is_refused_before_anything_is_fetched(
    fresh_server: TestServer, read_only_dir: Path
) -> None:
    """fetch(save_dir=<read-only>) raises OSError at once: no request is sent."""
    with pytest.raises(OSError, match="Read-only file system"):
        await collect([fresh_server.url("/ok")], save_dir=read_only_dir)
    assert fresh_server.stats.requests == []


def test_cli_refuses_an_unwritable_save_dir_up_front(server: TestServer, read_only_dir: Path) -> None:
    """--save into a read-only directory is a usage error: exit 2, a message naming DIR and why, nothing fetched."""
    result = run_cli("--save", str(read_only_dir), server.url("/ok"))
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) <= 3  # the contract's usage error: usage, hint, and the one line that names the problem
    assert lines[-1] == f"asyncfetch: error: cannot use --save {read_only_dir}: Read-only file system"


def test_cli_on_a_full_disk_writes_every_record_and_exits_1(server: TestServer, full_disk: Path) -> None:
    """--save onto a full disk: every request has its record on stdout, no traceback, exit status 1."""
    urls = "".join(server.url(f"/bytes/20000?i={i}") + "\n" for i in range(8))
    result = run_cli("--save", str(full_disk), "-c", "4", "-q", input=urls)
    assert result.returncode == 1, result.stderr
    records = records_of(result.stdout)
    assert sorted(r["index"] for r in records) == list(range(8))
    assert {r["error"]["kind"] for r in records if r["error"]} == {"save"}
    assert any(r["error"] is None for r in records)
    assert b"Traceback" not in result.stderr


def test_cli_records_that_cannot_be_written_end_the_run_with_one_line(server: TestServer, full_disk: Path) -> None:
    """-o onto a full disk: exit 1 and one line naming the problem, no traceback."""
    urls = "".join(server.url(f"/bytes/3000?i={i}") + "\n" for i in range(60))
    result = run_cli("-o", str(full_disk / "records.jsonl"), "--body", "-c", "4", "-q", input=urls)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == ["asyncfetch: error: cannot write records: No space left on device"]
