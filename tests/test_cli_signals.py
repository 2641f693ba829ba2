"""How a run ends when it is cut short: SIGINT and SIGTERM, a reader that goes away, kill -9 then --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_process import running, wait_for, write_lines
from tests.conftest import records_of
from tests.server import TestServer


def _whole_json_lines(stdout: bytes) -> list[dict[str, object]]:
    """The records, after checking that stdout holds whole JSON lines and nothing else."""
    assert not stdout or stdout.endswith(b"\n"), stdout[-200:]
    return records_of(stdout)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_exits_130_after_writing_the_complete_records(
    fresh_server: TestServer, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGINT or SIGTERM mid-run: exit 130, the records already complete written whole, the summary
    printed, no traceback, and no further request started."""
    urls = [fresh_server.url(f"/ok?n={n}") for n in range(2)]
    urls += [fresh_server.url(f"/sleep/2000?n={n}") for n in range(20)]
    listing = write_lines(tmp_path / "urls.txt", urls)
    with running("-c", "2", "--summary", str(listing)) as child:
        early = [json.loads(child.line()) for _ in range(2)]
        wait_for("/sleep requests in flight", lambda: fresh_server.hits("/sleep") >= 2)
        child.signal(signum)
        finished = child.finish(timeout=10)
    assert finished.returncode == 130, finished.stderr
    records = _whole_json_lines(finished.stdout)
    assert sorted(r["url"] for r in early) == urls[:2]
    assert records[:2] == early
    assert all(r["url"] in urls for r in records)
    stderr = finished.stderr.decode()
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    assert f"{len(records)} requests in" in stderr
    assert fresh_server.hits("/sleep") < 20, "it went on taking input after the signal"


def test_sigint_ends_a_run_whose_input_pipe_is_still_open(server: TestServer) -> None:
    """SIGINT stops taking input: a run waiting on an open stdin pipe exits 130 with its records."""
    with running("-q", stdin=subprocess.PIPE) as child:
        child.send((server.url("/ok") + "\n").encode())
        first = json.loads(child.line())
        child.signal(signal.SIGINT)
        finished = child.finish(timeout=10)
    assert finished.returncode == 130, finished.stderr
    assert _whole_json_lines(finished.stdout) == [first]
    assert b"Traceback" not in finished.stderr


def test_sigint_with_ordered_writes_the_complete_records_held_back(fresh_server: TestServer) -> None:
    """With --ordered, records that wait behind an unfinished earlier request are still written on SIGINT."""
    lines = [fresh_server.url("/sleep/30000")] + [fresh_server.url(f"/ok?n={n}") for n in range(3)]
    with running("--ordered", "-c", "4", "-q", stdin=subprocess.PIPE) as child:
        child.send("".join(line + "\n" for line in lines).encode())
        child.close_stdin()
        wait_for("the three /ok requests answered", lambda: fresh_server.hits("/ok") == 3)
        time.sleep(0.5)  # the answers are tiny: half a second is plenty to read them
        child.signal(signal.SIGINT)
        finished = child.finish(timeout=10)
    assert finished.returncode == 130, finished.stderr
    records = _whole_json_lines(finished.stdout)
    assert [r["index"] for r in records] == [1, 2, 3]


def test_two_quick_sigints_exit_130_without_a_traceback(fresh_server: TestServer, tmp_path: Path) -> None:
    """A second SIGINT right after the first still ends the run with 130, whole lines and no traceback."""
    urls = [fresh_server.url("/ok")] + [fresh_server.url(f"/sleep/5000?n={n}") for n in range(10)]
    listing = write_lines(tmp_path / "urls.txt", urls)
    with running("-c", "3", str(listing)) as child:
        child.line()
        wait_for("/sleep requests in flight", lambda: fresh_server.hits("/sleep") >= 2)
        child.signal(signal.SIGINT)
        child.signal(signal.SIGINT)
        finished = child.finish(timeout=10)
    assert finished.returncode == 130, finished.stderr
    assert [r["url"] for r in _whole_json_lines(finished.stdout)] == urls[:1]
    assert b"Traceback" not in finished.stderr


@pytest.mark.slow
def test_a_second_sigint_exits_at_once_even_while_stdout_is_blocked(server: TestServer, tmp_path: Path) -> None:
    """A second SIGINT ends the process at once, even when a reader that stopped reading blocks stdout."""
    listing = write_lines(tmp_path / "urls.txt", [server.url(f"/bytes/10?n={n}") for n in range(3000)])
    with running("-c", "5", "-q", str(listing)) as child:
        child.line()  # running, and the reader (this test) now stops reading: the pipe fills up
        time.sleep(1)
        child.signal(signal.SIGINT)
        time.sleep(0.3)
        child.signal(signal.SIGINT)
        status = child.wait(timeout=3)
        assert status == 130


def test_a_reader_that_closes_stdout_ends_the_run_with_141_quietly(fresh_server: TestServer, tmp_path: Path) -> None:
    """`asyncfetch … | head -1`: once the reader is gone the run exits promptly with 141, no traceback."""
    total = 2000
    listing = write_lines(tmp_path / "urls.txt", [fresh_server.url(f"/sleep/20?n={n}") for n in range(total)])
    with running("-c", "10", str(listing)) as child:
        json.loads(child.line())
        child.close_stdout()
        status = child.wait(timeout=10)
        assert child.process.stderr is not None
        stderr = child.process.stderr.read().decode()
    assert status == 141, stderr
    assert "Traceback" not in stderr
    assert stderr == ""
    assert fresh_server.hits("/sleep") < total, "it went on fetching for nobody"


def test_a_reader_gone_is_noticed_before_the_next_record_is_ready(server: TestServer, tmp_path: Path) -> None:
    """With the next record seconds away, a closed stdout still ends the run at once (141)."""
    listing = write_lines(tmp_path / "urls.txt", [server.url("/ok"), server.url("/sleep/20000")])
    with running("-c", "1", str(listing)) as child:
        json.loads(child.line())
        started = time.monotonic()
        child.close_stdout()
        status = child.wait(timeout=10)
    assert status == 141
    assert time.monotonic() - started < 5, "it waited for the next record to find out"


@pytest.mark.slow
@pytest.mark.parametrize("torn", [False, True], ids=["clean-end", "torn-last-line"])
def test_resume_after_kill_9_records_every_request_exactly_once(
    fresh_server: TestServer, tmp_path: Path, torn: bool
) -> None:
    """kill -9 mid-run, then --resume: every index has exactly one record in FILE and every line is JSON."""
    urls = [fresh_server.url(f"/sleep/{(n % 10) * 50}?n={n}") for n in range(40)]
    listing = write_lines(tmp_path / "urls.txt", urls)
    out = tmp_path / "out.jsonl"
    with running("-c", "10", "-q", "-o", str(out), str(listing)) as child:
        wait_for("a few records in FILE", lambda: out.exists() and out.read_bytes().count(b"\n") >= 5)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    recorded_first = out.read_bytes().count(b"\n")
    assert recorded_first < len(urls), "the first run ended before the kill"
    if torn:
        with out.open("ab") as file:
            file.write(b'{"url":"' + urls[-1].encode() + b'","index":39,"method":"G')
    fresh_server.reset_stats()
    with running("-c", "10", "-q", "-o", str(out), "--resume", str(listing)) as child:
        finished = child.finish(timeout=20)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == b""
    records = _whole_json_lines(out.read_bytes())
    assert Counter(r["index"] for r in records) == Counter(range(len(urls)))
    assert all(r["url"] == urls[int(str(r["index"]))] for r in records)
    assert len(fresh_server.stats.requests) == len(urls) - recorded_first
