"""--state: conditional re-fetch between runs, ``changed``, and a store that survives kills and refuses sharing.

Every exchange is with the local server (tests/server.py ``/cond``), which records the headers
it received and answers 304 only when the request's validators match its current body.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import asyncfetch
from asyncfetch.errors import StateError
from asyncfetch.state import StateStore, Stored
from tests.cli_process import wait_for
from tests.conftest import collect, records_of, run_cli
from tests.server import TestServer

pytestmark = pytest.mark.anyio


def sent(server: TestServer, prefix: str) -> list[dict[str, str]]:
    """The headers of every request the server got whose path starts with ``prefix``, in order."""
    return [seen.headers for seen in server.stats.requests if seen.path.startswith(prefix)]


async def run(urls: list[str], state: Path, **options: Any) -> dict[str, dict[str, Any]]:
    """One run with ``--state``: each URL's record as a dict."""
    return {r.url: r.to_dict() for r in await collect(urls, state=state, **options)}


async def test_a_second_run_sends_the_etag_and_a_304_is_unchanged(fresh_server: TestServer, tmp_path: Path) -> None:
    """The first run stores the ETag; the second sends If-None-Match, gets 304: ok, changed false."""
    url = fresh_server.url("/cond/a?validators=etag")
    state = tmp_path / "state.db"
    first = (await run([url], state))[url]
    assert first["status"] == 200
    assert first["changed"] is True  # first sight
    assert first["etag"].startswith('"')
    assert "last_modified" not in first  # the response had none
    second = (await run([url], state))[url]
    assert sent(fresh_server, "/cond/a")[1]["if-none-match"] == first["etag"]
    assert second["status"] == 304
    assert second["ok"] is True
    assert second["error"] is None
    assert second["changed"] is False


async def test_last_modified_alone_is_sent_back_as_if_modified_since(fresh_server: TestServer, tmp_path: Path) -> None:
    """A resource with only Last-Modified is asked with If-Modified-Since, and its 304 is unchanged."""
    url = fresh_server.url("/cond/b?validators=lm")
    state = tmp_path / "state.db"
    first = (await run([url], state))[url]
    assert "etag" not in first
    second = (await run([url], state))[url]
    headers = sent(fresh_server, "/cond/b")[1]
    assert headers["if-modified-since"] == first["last_modified"]
    assert "if-none-match" not in headers
    assert (second["status"], second["changed"]) == (304, False)


async def test_a_changed_resource_is_a_200_with_changed_true(fresh_server: TestServer, tmp_path: Path) -> None:
    """When the body changes its validators no longer match: 200, changed true, the new validators stored."""
    url = fresh_server.url("/cond/c")
    state = tmp_path / "state.db"
    await run([url], state)
    fresh_server.documents["c"] = b"v2"
    changed = (await run([url], state))[url]
    assert (changed["status"], changed["changed"]) == (200, True)
    again = (await run([url], state))[url]
    assert (again["status"], again["changed"]) == (304, False)
    assert sent(fresh_server, "/cond/c")[2]["if-none-match"] == changed["etag"]


async def test_a_200_with_the_stored_body_is_unchanged(fresh_server: TestServer, tmp_path: Path) -> None:
    """Without validators the server answers 200 every time: the same SHA-256 is changed false, another is true."""
    url = fresh_server.url("/cond/d?validators=none")
    state = tmp_path / "state.db"
    assert (await run([url], state))[url]["changed"] is True
    same = (await run([url], state))[url]
    assert (same["status"], same["changed"]) == (200, False)
    assert "if-none-match" not in sent(fresh_server, "/cond/d")[1]
    fresh_server.documents["d"] = b"other"
    assert (await run([url], state))[url]["changed"] is True


async def test_the_users_own_conditional_header_wins(fresh_server: TestServer, tmp_path: Path) -> None:
    """A -H If-None-Match of the user's is sent as given, not replaced by the stored ETag."""
    url = fresh_server.url("/cond/e")
    state = tmp_path / "state.db"
    await run([url], state)
    await run([url], state, headers=(("If-None-Match", '"mine"'),))
    assert sent(fresh_server, "/cond/e")[1]["if-none-match"] == '"mine"'


async def test_records_carry_no_state_fields_without_state(fresh_server: TestServer) -> None:
    """Without --state the record is the README's: no changed, etag or last_modified, no conditional header."""
    [record] = await collect([fresh_server.url("/cond/f")])
    assert {"changed", "etag", "last_modified"}.isdisjoint(record.to_dict())
    assert "if-none-match" not in sent(fresh_server, "/cond/f")[0]


async def test_a_failure_keeps_the_last_good_validators(fresh_server: TestServer, tmp_path: Path) -> None:
    """A 503 stores nothing (and an error record has no changed): the next run still asks with the last good ETag."""
    state = tmp_path / "state.db"
    url = fresh_server.url("/cond/g")
    first = (await run([url], state))[url]
    fresh_server.closed_gates.add("g")
    failed = (await run([url], state, retries=0))[url]
    assert (failed["status"], failed["changed"]) == (503, True)
    refused = await collect(["http://127.0.0.1:9/never"], state=state, retries=0)
    assert "changed" not in refused[0].to_dict()
    fresh_server.closed_gates.clear()
    again = (await run([url], state))[url]
    assert sent(fresh_server, "/cond/g")[2]["if-none-match"] == first["etag"]
    assert (again["status"], again["changed"]) == (304, False)


async def test_a_redirect_is_stored_under_the_requested_url(fresh_server: TestServer, tmp_path: Path) -> None:
    """Validators of the final response are kept for the URL as requested: the next run's first hop asks with them."""
    state = tmp_path / "state.db"
    target = "/cond/h"
    url = fresh_server.url(f"/redirect-to?url={target}")
    first = (await run([url], state))[url]
    assert first["final_url"] == fresh_server.url(target)
    second = (await run([url], state))[url]
    redirect_hops = sent(fresh_server, "/redirect-to")
    assert redirect_hops[1]["if-none-match"] == first["etag"]
    assert (second["status"], second["changed"]) == (304, False)


async def test_with_save_an_unchanged_body_is_not_written_again(fresh_server: TestServer, tmp_path: Path) -> None:
    """--save with --state: a 304 or a same-digest 200 writes no second file and names the first one."""
    state, saved = tmp_path / "state.db", tmp_path / "saved"
    with_etag, without = fresh_server.url("/cond/s1"), fresh_server.url("/cond/s2?validators=none")
    first = await run([with_etag, without], state, save_dir=saved)
    files_after_first = sorted(p for p in saved.rglob("*") if p.is_file())
    assert len(files_after_first) == 2
    second = await run([with_etag, without], state, save_dir=saved)
    assert sorted(p for p in saved.rglob("*") if p.is_file()) == files_after_first
    for url in (with_etag, without):
        assert second[url]["changed"] is False
        assert second[url]["saved_to"] == first[url]["saved_to"]
    fresh_server.documents["s1"] = b"new body"
    third = await run([with_etag], state, save_dir=saved)
    assert third[with_etag]["changed"] is True
    assert third[with_etag]["saved_to"] != first[with_etag]["saved_to"]
    assert Path(third[with_etag]["saved_to"]).read_bytes() == b"new body"


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    """A text file, or an SQLite database of something else, is refused before anything is fetched."""
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    with pytest.raises(StateError, match="not an asyncfetch state file"):
        asyncfetch.fetch(["http://127.0.0.1:9/"], state=text)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(StateError, match="not an asyncfetch state file"):
        asyncfetch.fetch(["http://127.0.0.1:9/"], state=other)
    assert text.read_text() == "not a database\n" * 100  # left as it was


async def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    """While one store holds the file, opening it again fails with a message saying it is in use."""
    state = tmp_path / "state.db"
    first = StateStore(state)
    try:
        with pytest.raises(StateError, match="in use by another asyncfetch run"):
            StateStore(state)
    finally:
        first.close_unstarted()
    StateStore(state).close_unstarted()  # free again once closed


async def _remembered(state: Path, rows: dict[str, Stored]) -> None:
    """A state file that has ``rows`` (URL to what is stored for it), written by a store of its own."""
    store = StateStore(state)
    store.start()
    for url, stored in rows.items():
        store.remember(store.lookup(url), stored)
    await store.aclose()


async def test_the_store_answers_what_it_was_told(tmp_path: Path) -> None:
    """remember() then a new store's lookup() gives the same fields back; an unknown URL gives None."""
    state = tmp_path / "state.db"
    stored = Stored('"x"', "Tue, 01 Dec 2026 00:00:00 GMT", "ab" * 32, 200, 1_700_000_000.5, "d/x.html")
    await _remembered(state, {"https://example.com/x": stored})
    store = StateStore(state)
    store.start()
    try:
        known, unknown = store.lookup("https://example.com/x"), store.lookup("https://example.com/y")
        assert await store.answer(known) == stored
        assert await store.answer(unknown) is None
    finally:
        await store.aclose()


def _statements(store: StateStore, verb: str) -> list[str]:
    """Record the SQL statements starting with ``verb`` that the store's thread runs from now on."""
    seen: list[str] = []
    store._db.set_trace_callback(lambda sql: seen.append(sql) if sql.startswith(verb) else None)
    return seen


async def test_lookups_are_answered_a_chunk_at_a_time(tmp_path: Path) -> None:
    """Lookups wait for their chunk to fill (or an answer to be needed): 1,200 URLs, 3 SELECTs, right answers."""
    state = tmp_path / "state.db"
    urls = [f"https://example.com/{i}" for i in range(1_200)]
    every_other = {url: Stored(f'"{i}"', None, None, 200, 1_700_000_000.0) for i, url in enumerate(urls[::2])}
    await _remembered(state, every_other)
    store = StateStore(state, chunk=500)
    selects = _statements(store, "SELECT")
    store.start()
    try:
        lookups = [store.lookup(url) for url in urls[:499]]
        await asyncio.sleep(0.1)
        assert selects == []  # asked, but not sent: no thread hand-off of their own
        lookups += [store.lookup(url) for url in urls[499:]]  # the 500th and the 1,000th send a chunk
        answers = [await store.answer(lookup) for lookup in lookups]
    finally:
        await store.aclose()
    assert len(selects) == 3  # two full chunks, and the last 200 sent when their answer was needed
    assert [a.etag if a is not None else None for a in answers[:4]] == ['"0"', None, '"1"', None]
    assert sum(a is not None for a in answers) == 600


async def test_writes_close_together_share_one_commit(tmp_path: Path) -> None:
    """2,000 updates made at once are written in one transaction, not one per update."""
    store = StateStore(tmp_path / "state.db")
    commits = _statements(store, "COMMIT")
    store.start()
    for i in range(2_000):
        store.remember(store.lookup(f"https://example.com/{i}"), Stored(None, None, None, 200, 1_700_000_000.0))
    await asyncio.sleep(0.5)  # the batch goes out on its own, before the run ends
    assert len(commits) == 1
    await store.aclose()
    assert len(commits) == 1


async def test_a_worker_cancelled_while_waiting_leaves_the_answer_to_the_others(tmp_path: Path) -> None:
    """Two lookups of one chunk are awaited; cancelling one waiter does not cancel the other's answer."""
    state = tmp_path / "state.db"
    stored = Stored('"b"', None, None, 200, 1_700_000_000.0)
    await _remembered(state, {"https://example.com/b": stored})
    store = StateStore(state)
    store.start()
    try:
        first, second = store.lookup("https://example.com/a"), store.lookup("https://example.com/b")
        cancelled = asyncio.create_task(store.answer(first))
        waiting = asyncio.create_task(store.answer(second))
        await asyncio.sleep(0)  # both are waiting for the chunk's answer now
        cancelled.cancel()
        assert await asyncio.wait_for(waiting, 10) == stored
    finally:
        await store.aclose()


async def test_a_second_run_over_an_unchanged_list_writes_nothing(fresh_server: TestServer, tmp_path: Path) -> None:
    """Every answer a 304 (or the same body, same validators): the file is not written, rows keep their time."""
    state = tmp_path / "state.db"
    urls = [fresh_server.url(f"/cond/w{i}") for i in range(20)] + [fresh_server.url("/cond/wn?validators=none")]

    def rows() -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(state)) as db:
            return db.execute("SELECT * FROM validators ORDER BY key").fetchall()

    await run(urls, state)
    before = rows()
    assert len(before) == 21
    second = await run(urls, state)
    assert all(r["changed"] is False for r in second.values())
    assert rows() == before  # fetched_at and status included: the rows still describe the first 200s
    fresh_server.documents["w0"] = b"v2"
    third = await run(urls, state)
    assert third[urls[0]]["changed"] is True
    changed = [row for row in rows() if row not in before]
    assert len(changed) == 1  # only the changed resource was written


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import asyncfetch

    async def main():
        urls = [f"{sys.argv[1]}/cond/k{i}?n={i}" for i in range(10_000)]
        async for record in asyncfetch.fetch(urls, state=Path(sys.argv[2]), concurrency=4):
            print(record.url, flush=True)

    asyncio.run(main())
    """
)


def _committed(state: Path) -> int:
    """Rows another process has committed to ``state`` so far (0 before the table exists)."""
    with contextlib.closing(sqlite3.connect(state, timeout=5)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM validators").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def test_the_state_survives_kill_9_mid_run(fresh_server: TestServer, tmp_path: Path) -> None:
    """A run killed with SIGKILL mid-way leaves a consistent file with (nearly) every record written, no lock."""
    state = tmp_path / "state.db"
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, fresh_server.base, str(state)], stdout=subprocess.PIPE
    ) as child:
        assert child.stdout is not None
        printed = [child.stdout.readline() for _ in range(300)]
        assert all(printed), "the child ended early"
        # Written in batches while the run goes on (not only when it ends): then killed mid-run.
        wait_for("300 rows committed by the running child", lambda: _committed(state) >= 300, timeout=30)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT count(*) FROM validators").fetchone()[0]
    assert 300 <= rows < 10_000
    # The lock died with the process: the next run may use the file, and finds what was kept.
    urls = [f"{fresh_server.base}/cond/k{i}?n={i}" for i in range(300)]
    records = asyncio.run(collect(urls, state=state))
    assert all(r.status == 304 and r.changed is False for r in records)


def test_two_runs_at_once_on_one_state_file_are_refused(fresh_server: TestServer, tmp_path: Path) -> None:
    """While one process runs with --state FILE, a second process with the same FILE fails at once, saying why."""
    state = tmp_path / "state.db"
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, fresh_server.base, str(state)], stdout=subprocess.PIPE
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline()  # running, and holding the lock
        second = subprocess.run(
            [sys.executable, "-c", _CHILD, fresh_server.base, str(state)], capture_output=True, timeout=60, check=False
        )
        assert second.returncode != 0
        assert b"in use by another asyncfetch run" in second.stderr
        assert second.stdout == b""
        child.kill()


def test_the_cli_nightly_run_lists_what_changed(fresh_server: TestServer, tmp_path: Path) -> None:
    """asyncfetch --state FILE twice: the second run's records are 304s with changed false, except the changed one."""
    state = tmp_path / "state.db"
    urls = "".join(fresh_server.url(f"/cond/cli{i}") + "\n" for i in range(3))
    first = run_cli("-q", "--state", str(state), input=urls)
    assert first.returncode == 0, first.stderr
    assert all(r["changed"] is True for r in records_of(first.stdout))
    fresh_server.documents["cli1"] = b"new"
    second = run_cli("-q", input=urls, env={"ASYNCFETCH_STATE": str(state)})
    assert second.returncode == 0, second.stderr
    changed = {r["url"]: r["changed"] for r in records_of(second.stdout)}
    assert changed == {fresh_server.url(f"/cond/cli{i}"): i == 1 for i in range(3)}


def test_the_cli_refuses_a_bad_state_file_and_state_with_work(tmp_path: Path) -> None:
    """Not a database: exit 2 with one line naming it; asyncfetch work --state: exit 2, saying it is not supported."""
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    result = run_cli("-q", "--state", str(text), "http://127.0.0.1:9/")
    assert result.returncode == 2
    assert b"not an asyncfetch state file" in result.stderr
    assert result.stdout == b""
    work = run_cli("work", "--burst", "--state", str(tmp_path / "s.db"))
    assert work.returncode == 2
    assert b"--state is not supported by asyncfetch work" in work.stderr
