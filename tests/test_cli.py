"""The process boundary, black-box: stdout purity, exit statuses, usage errors, inputs, -o, env defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import asyncfetch
from tests.cli_process import cli_env, running, write_lines
from tests.conftest import records_of, run_cli, unused_port
from tests.server import TestServer

# -- stdout purity ------------------------------------------------------------------------------


def _stdout_is_json_lines(stdout: bytes) -> list[dict[str, Any]]:
    """Every byte of stdout belongs to a whole line of JSON; the records."""
    assert not stdout or stdout.endswith(b"\n"), stdout[-200:]
    records = records_of(stdout)
    assert all(isinstance(record, dict) for record in records)
    return records


def test_stdout_holds_only_json_records_with_progress_summary_and_warnings_forced(
    server: TestServer, tmp_path: Path
) -> None:
    """With --progress, --summary, a warning and error records, stdout still carries nothing but JSON lines."""
    urls = write_lines(
        tmp_path / "urls.txt",
        [server.url("/ok"), server.url("/status/404"), "ftp://example.invalid/x", server.url("/bytes/10")],
    )
    # A low open-file limit makes -c 1000 print its warning: ulimit -n 200, then the CLI.
    launcher = (
        "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)); "
        "sys.argv[0] = 'asyncfetch'; runpy.run_module('asyncfetch', run_name='__main__', alter_sys=True)"
    )
    result = subprocess.run(
        [sys.executable, "-c", launcher, "--progress", "--summary", "-c", "1000", str(urls)],
        capture_output=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )
    records = _stdout_is_json_lines(result.stdout)
    assert len(records) == 4
    stderr = result.stderr.decode()
    assert "warning" in stderr
    assert "4 requests in" in stderr, stderr
    assert "asyncfetch" in stderr
    assert "Traceback" not in stderr


def test_summary_goes_to_stderr_not_stdout(server: TestServer) -> None:
    """--summary writes its counts on stderr; stdout has exactly one JSON line per request."""
    result = run_cli("--summary", input=server.url("/ok") + "\n" + server.url("/status/500") + "\n")
    records = _stdout_is_json_lines(result.stdout)
    assert len(records) == 2
    assert b"2 requests in" in result.stderr
    assert b"requests in" not in result.stdout


def test_summary_counts_connections_opened_and_reused(fresh_server: TestServer) -> None:
    """--summary says how many connections were opened and how many requests reused one."""
    urls = "".join(fresh_server.url(f"/ok?i={i}") + "\n" for i in range(3))
    result = run_cli("--summary", "-c", "1", input=urls)
    assert result.returncode == 0, result.stderr
    assert b"1 connection opened, 2 requests on a reused one" in result.stderr
    assert fresh_server.stats.connections == 1


# -- exit statuses ------------------------------------------------------------------------------


def test_exit_status_is_0_when_every_request_got_a_response_even_a_404(server: TestServer) -> None:
    """A 404 is a response: without --fail the run exits 0."""
    result = run_cli(input=f"{server.url('/ok')}\n{server.url('/status/404')}\n")
    assert result.returncode == 0, result.stderr
    assert sorted(r["status"] for r in records_of(result.stdout)) == [200, 404]


@pytest.mark.parametrize("kind", ["invalid_url", "connect"])
def test_exit_status_is_1_when_any_record_is_an_error(server: TestServer, kind: str) -> None:
    """One error record among good ones makes the exit status 1."""
    bad = "ftp://example.invalid/x" if kind == "invalid_url" else f"http://127.0.0.1:{unused_port()}/"
    result = run_cli("-r", "0", input=f"{server.url('/ok')}\n{bad}\n")
    assert result.returncode == 1, result.stderr
    records = records_of(result.stdout)
    assert [r["error"]["kind"] for r in records if r["error"]] == [kind]


def test_exit_status_is_1_with_fail_and_a_404(server: TestServer) -> None:
    """--fail counts a status of 400 or more as a failure."""
    result = run_cli("--fail", input=f"{server.url('/ok')}\n{server.url('/status/404')}\n")
    assert result.returncode == 1, result.stderr
    assert len(records_of(result.stdout)) == 2


def test_exit_status_is_0_with_fail_when_every_status_is_below_400(server: TestServer) -> None:
    """--fail alone does not fail a run whose statuses are all below 400."""
    result = run_cli("--fail", "--no-follow", input=f"{server.url('/ok')}\n{server.url('/redirect/1')}\n")
    assert result.returncode == 0, result.stderr
    assert sorted(r["status"] for r in records_of(result.stdout)) == [200, 302]


# -- usage errors -------------------------------------------------------------------------------

# (case id, arguments, text the message must contain). {urls}: a file with a URL of the fresh
# server; {out}: an existing file that must survive; {missing}: no such file; {dir}: a directory.
USAGE_ERRORS = [
    ("unknown-option", ["--bogus", "-o", "{out}", "{urls}"], "--bogus"),
    ("concurrency-zero", ["-c", "0", "-o", "{out}", "{urls}"], "concurrency"),
    ("concurrency-not-a-number", ["-c", "abc", "-o", "{out}", "{urls}"], "concurrency"),
    ("concurrency-too-high", ["-c", "100001", "-o", "{out}", "{urls}"], "concurrency"),
    ("max-size-bad-suffix", ["--max-size", "12Q", "-o", "{out}", "{urls}"], "12Q"),
    ("header-without-colon", ["-H", "nocolon", "-o", "{out}", "{urls}"], "nocolon"),
    ("timeout-zero", ["-t", "0", "-o", "{out}", "{urls}"], "timeout"),
    ("data-file-missing", ["-d", "@{missing}", "-o", "{out}", "{urls}"], "{missing}"),
    ("input-missing", ["-o", "{out}", "{urls}", "{missing}"], "{missing}"),
    ("input-is-a-directory", ["-o", "{out}", "{dir}"], "{dir}"),
    ("resume-without-output", ["--resume", "{urls}"], "--output"),
    ("output-in-missing-directory", ["-o", "{missing}/out.jsonl", "{urls}"], "{missing}"),
]


@pytest.mark.parametrize(("args", "needle"), [c[1:] for c in USAGE_ERRORS], ids=[c[0] for c in USAGE_ERRORS])
def test_a_usage_error_exits_2_with_a_short_message_and_fetches_nothing(
    fresh_server: TestServer, tmp_path: Path, args: list[str], needle: str
) -> None:
    """A usage error: exit 2, at most three lines on stderr naming the problem, no traceback, nothing
    fetched, stdout empty, and an existing -o FILE left as it was."""
    names = {
        "urls": str(write_lines(tmp_path / "urls.txt", [fresh_server.url("/ok")])),
        "out": str(tmp_path / "out.jsonl"),
        "missing": str(tmp_path / "missing"),
        "dir": str(tmp_path / "a-directory"),
    }
    (tmp_path / "a-directory").mkdir()
    Path(names["out"]).write_bytes(b"precious\n")
    result = run_cli(*[arg.format(**names) for arg in args], input=fresh_server.url("/ok") + "\n", timeout=30)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert 1 <= len(stderr.splitlines()) <= 3, stderr
    assert needle.format(**names) in stderr
    assert "Traceback" not in stderr
    assert result.stdout == b""
    assert fresh_server.stats.connections == 0
    assert Path(names["out"]).read_bytes() == b"precious\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_input_without_read_permission_is_a_usage_error(fresh_server: TestServer, tmp_path: Path) -> None:
    """An INPUT the user may not read: exit 2, one short message naming it, nothing fetched."""
    locked = write_lines(tmp_path / "locked.txt", [fresh_server.url("/ok")])
    locked.chmod(0)
    result = run_cli(str(locked))
    assert result.returncode == 2
    assert str(locked) in result.stderr.decode()
    assert len(result.stderr.splitlines()) <= 3
    assert fresh_server.stats.connections == 0


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc/self/mem")
def test_an_input_that_fails_while_being_read_is_reported_without_a_traceback(fresh_server: TestServer) -> None:
    """An INPUT whose read fails (here /proc/self/mem: EIO) ends with exit 2 and a short message, not a traceback."""
    result = run_cli("/proc/self/mem", timeout=30)
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert "/proc/self/mem" in stderr
    assert len(stderr.splitlines()) <= 3
    assert result.returncode == 2
    assert result.stdout == b""


def test_a_closed_stdout_is_reported_without_a_traceback(server: TestServer, tmp_path: Path) -> None:
    """With stdout closed, the run ends with exit 1 and a one-line message, never a traceback."""
    urls = write_lines(tmp_path / "urls.txt", [server.url("/ok")])
    result = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" "$@" >&-', sys.executable, "-m", "asyncfetch", str(urls)],
        capture_output=True,
        env=cli_env(),
        timeout=30,
        check=False,
    )
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) <= 3
    assert "standard output" in stderr or "stdout" in stderr, stderr
    assert result.returncode == 1


# -- inputs -------------------------------------------------------------------------------------


def test_several_inputs_and_stdin_are_read_in_order_with_one_index_across_them(
    server: TestServer, tmp_path: Path
) -> None:
    """INPUTs and '-' are read in the order given; the index counts requests across all of them."""
    urls = [server.url(f"/ok?n={n}") for n in range(6)]
    first = write_lines(tmp_path / "first.txt", ["# a comment", urls[0], "", urls[1]])
    last = write_lines(tmp_path / "last.txt", [urls[4], "  ", urls[5]])
    result = run_cli(str(first), "-", str(last), input=f"{urls[2]}\n# skipped\n{urls[3]}\n")
    assert result.returncode == 0, result.stderr
    assert {r["index"]: r["url"] for r in records_of(result.stdout)} == dict(enumerate(urls))


def test_the_first_request_starts_before_the_input_ends(fresh_server: TestServer) -> None:
    """Input is read lazily: a URL written to a pipe that stays open is fetched at once."""
    with running("-q", stdin=subprocess.PIPE) as child:
        child.send((fresh_server.url("/ok") + "\n").encode())
        deadline = time.monotonic() + 10
        while fresh_server.hits("/ok") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fresh_server.hits("/ok") == 1, "the request waited for the end of the input"
        child.close_stdin()
        finished = child.finish()
    assert finished.returncode == 0
    assert len(records_of(finished.stdout)) == 1


def test_a_record_is_written_while_the_input_pipe_is_still_open(server: TestServer) -> None:
    """A slow producer does not hold back requests in flight: their records are written while input waits."""
    with running("-q", stdin=subprocess.PIPE) as child:
        child.send((server.url("/sleep/200") + "\n").encode())
        first = json.loads(child.line(timeout=10))
        assert first["index"] == 0
        assert first["status"] == 200
        child.send((server.url("/ok") + "\n").encode())
        second = json.loads(child.line(timeout=10))
        assert second["index"] == 1
        child.close_stdin()
        finished = child.finish()
    assert finished.returncode == 0
    assert len(records_of(finished.stdout)) == 2


def test_stdin_that_is_empty_gives_no_records_and_exit_0() -> None:
    """An empty input (not a terminal) is a run of zero requests: no output, exit 0."""
    result = run_cli(input=b"")
    assert result.returncode == 0
    assert result.stdout == b""


# -- output file --------------------------------------------------------------------------------


def test_output_file_gets_the_records_and_stdout_nothing(server: TestServer, tmp_path: Path) -> None:
    """-o FILE writes the JSON lines to FILE; stdout stays empty."""
    out = tmp_path / "out.jsonl"
    result = run_cli("-o", str(out), input=f"{server.url('/ok')}\n{server.url('/status/404')}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert sorted(r["status"] for r in _stdout_is_json_lines(out.read_bytes())) == [200, 404]


def test_output_file_without_resume_is_replaced(server: TestServer, tmp_path: Path) -> None:
    """Without --resume, -o FILE replaces what FILE held (no leftover lines of an earlier run)."""
    out = tmp_path / "out.jsonl"
    old = json.dumps({"url": server.url("/old"), "index": 0}) + "\n"
    out.write_text(old * 50 + "and a torn line", encoding="utf-8")
    result = run_cli("-o", str(out), input=server.url("/ok") + "\n")
    assert result.returncode == 0, result.stderr
    records = _stdout_is_json_lines(out.read_bytes())
    assert [r["url"] for r in records] == [server.url("/ok")]


def test_resume_appends_only_the_requests_the_file_lacks(fresh_server: TestServer, tmp_path: Path) -> None:
    """--resume keeps FILE's records, fetches only the (index, url) pairs it lacks, and refetches an index
    whose recorded url differs."""
    urls = [fresh_server.url(f"/ok?n={n}") for n in range(4)]
    listing = write_lines(tmp_path / "urls.txt", urls)
    out = tmp_path / "out.jsonl"
    first = run_cli("-o", str(out), str(listing))
    assert first.returncode == 0, first.stderr
    kept = [r for r in records_of(out.read_bytes()) if r["index"] in (0, 2)]
    stranger = {**next(r for r in records_of(out.read_bytes()) if r["index"] == 3), "url": fresh_server.url("/x")}
    out.write_text("".join(json.dumps(r) + "\n" for r in [*kept, stranger]), encoding="utf-8")
    fresh_server.reset_stats()
    second = run_cli("-o", str(out), "--resume", str(listing))
    assert second.returncode == 0, second.stderr
    assert sorted(fresh_server.stats.paths()) == ["/ok?n=1", "/ok?n=3"]
    records = _stdout_is_json_lines(out.read_bytes())
    assert sorted((r["index"], r["url"]) for r in records if r["url"] != fresh_server.url("/x")) == list(
        enumerate(urls)
    )


# -- environment defaults -----------------------------------------------------------------------


def test_env_concurrency_sets_the_default_and_the_flag_wins(fresh_server: TestServer) -> None:
    """ASYNCFETCH_CONCURRENCY=1 runs one request at a time; -c 4 on the command line overrides it."""
    lines = "".join(fresh_server.url(f"/sleep/200?n={n}") + "\n" for n in range(4))
    alone = run_cli(input=lines, env={"ASYNCFETCH_CONCURRENCY": "1"})
    assert alone.returncode == 0, alone.stderr
    assert fresh_server.stats.max_in_flight == 1
    fresh_server.reset_stats()
    together = run_cli("-c", "4", input=lines, env={"ASYNCFETCH_CONCURRENCY": "1"})
    assert together.returncode == 0, together.stderr
    assert fresh_server.stats.max_in_flight > 1


@pytest.mark.parametrize(("value", "status"), [("1", 1), ("true", 1), ("0", 0), ("false", 0)])
def test_env_fail_takes_1_0_true_false(server: TestServer, value: str, status: int) -> None:
    """ASYNCFETCH_FAIL=1/true turns --fail on, 0/false leaves it off."""
    result = run_cli(input=server.url("/status/404") + "\n", env={"ASYNCFETCH_FAIL": value})
    assert result.returncode == status, result.stderr


def test_env_timeout_sets_the_deadline_and_the_flag_wins(server: TestServer) -> None:
    """ASYNCFETCH_TIMEOUT=0.2 times out a 0.6 s answer; -t 5 on the command line overrides it."""
    env = {"ASYNCFETCH_TIMEOUT": "0.2", "ASYNCFETCH_RETRIES": "0"}
    short = run_cli(input=server.url("/sleep/600") + "\n", env=env)
    assert short.returncode == 1
    [record] = records_of(short.stdout)
    assert record["error"]["kind"] == "timeout"
    long = run_cli("-t", "5", input=server.url("/sleep/600") + "\n", env=env)
    assert long.returncode == 0, long.stderr
    assert records_of(long.stdout)[0]["status"] == 200


def _echoed_headers(stdout: bytes) -> dict[str, str]:
    [record] = records_of(stdout)
    headers: dict[str, str] = json.loads(record["body"])["headers"]
    return headers


def test_env_header_takes_one_header_per_line(server: TestServer) -> None:
    """ASYNCFETCH_HEADER holds one 'Name: value' per line, each sent with every request."""
    env = {"ASYNCFETCH_HEADER": "X-One: 1\nX-Two: two words\n"}
    result = run_cli("--body", input=server.url("/echo") + "\n", env=env)
    assert result.returncode == 0, result.stderr
    headers = _echoed_headers(result.stdout)
    assert headers["x-one"] == "1"
    assert headers["x-two"] == "two words"


def test_header_flags_replace_the_env_headers(server: TestServer) -> None:
    """-H on the command line wins over ASYNCFETCH_HEADER: the flags' headers are the ones sent."""
    env = {"ASYNCFETCH_HEADER": "X-One: 1"}
    result = run_cli("--body", "-H", "X-Three: 3", input=server.url("/echo") + "\n", env=env)
    assert result.returncode == 0, result.stderr
    headers = _echoed_headers(result.stdout)
    assert headers["x-three"] == "3"
    assert "x-one" not in headers


def test_env_on_off_option_and_the_flag_wins(server: TestServer) -> None:
    """ASYNCFETCH_FOLLOW=0 stops following redirects; --follow on the command line wins."""
    env = {"ASYNCFETCH_FOLLOW": "0"}
    kept = run_cli(input=server.url("/redirect/1") + "\n", env=env)
    assert records_of(kept.stdout)[0]["status"] == 302
    followed = run_cli("--follow", input=server.url("/redirect/1") + "\n", env=env)
    assert records_of(followed.stdout)[0]["status"] == 200


@pytest.mark.parametrize(("value", "shown"), [("1", True), ("true", True), ("0", False), ("false", False)])
def test_env_summary_switches_the_summary_on_pipes(server: TestServer, value: str, shown: bool) -> None:
    """ASYNCFETCH_SUMMARY=1/true prints the summary even without a terminal; 0/false does not."""
    result = run_cli(input=server.url("/ok") + "\n", env={"ASYNCFETCH_SUMMARY": value})
    assert result.returncode == 0
    assert (b"1 requests in" in result.stderr) is shown, result.stderr


def test_no_summary_flag_wins_over_env_summary(server: TestServer) -> None:
    """--no-summary on the command line wins over ASYNCFETCH_SUMMARY=1."""
    result = run_cli("--no-summary", input=server.url("/ok") + "\n", env={"ASYNCFETCH_SUMMARY": "1"})
    assert result.returncode == 0
    assert result.stderr == b""


def test_a_bad_env_value_is_a_usage_error_naming_the_variable(fresh_server: TestServer) -> None:
    """ASYNCFETCH_CONCURRENCY=abc: exit 2, a short message naming the variable, nothing fetched."""
    result = run_cli(input=fresh_server.url("/ok") + "\n", env={"ASYNCFETCH_CONCURRENCY": "abc"})
    assert result.returncode == 2
    assert "ASYNCFETCH_CONCURRENCY" in result.stderr.decode()
    assert len(result.stderr.splitlines()) <= 3
    assert fresh_server.stats.connections == 0


# -- version and entry points -------------------------------------------------------------------


def test_version_prints_the_version_and_exits_0() -> None:
    """--version prints 'asyncfetch VERSION' on stdout and exits 0, also among other options."""
    for args in (["--version"], ["-c", "5", "--version"]):
        result = run_cli(*args, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"asyncfetch {asyncfetch.__version__}\n".encode()


@pytest.mark.parametrize("command", [[], ["fetch"], ["enqueue"], ["work"], ["collect"], ["status"]])
def test_every_command_shows_its_help(command: list[str]) -> None:
    """--help of the tool and of each command prints help on stdout and exits 0 (no markup error)."""
    result = run_cli(*command, "--help", timeout=30, env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    assert b"Usage:" in result.stdout
    assert b"Traceback" not in result.stderr


def test_version_answers_without_loading_typer_rich_or_httpx() -> None:
    """--version alone takes the fast path: typer, rich and httpx are never imported."""
    probe = (
        "import sys\n"
        "from asyncfetch.cli import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit as end:\n"
        "    code = end.code\n"
        "print(code, sorted(m for m in ('typer', 'rich', 'httpx', 'click') if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=cli_env(), timeout=30, check=False)
    assert result.stdout == f"asyncfetch {asyncfetch.__version__}\n".encode()
    assert result.stderr.decode().strip() == "0 []"


CONSOLE_SCRIPT = Path(sys.executable).with_name("asyncfetch")


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="the asyncfetch console script is not installed here")
def test_python_dash_m_asyncfetch_is_the_console_script(server: TestServer, tmp_path: Path) -> None:
    """`python -m asyncfetch` and the `asyncfetch` script answer alike: version, usage errors, records."""
    urls = write_lines(tmp_path / "urls.txt", [server.url("/ok"), server.url("/status/404")])

    def both(*args: str) -> list[tuple[int, bytes, bytes]]:
        results = []
        for command in ([sys.executable, "-m", "asyncfetch"], [str(CONSOLE_SCRIPT)]):
            done = subprocess.run(
                [*command, *args], capture_output=True, env=cli_env(), timeout=30, check=False, stdin=subprocess.DEVNULL
            )
            results.append((done.returncode, done.stdout, done.stderr))
        return results

    for args in (["--version"], ["-c", "0", str(urls)], ["--help"]):
        module, script = both(*args)
        assert module == script, args
    module, script = both("--fail", str(urls))
    assert module[0] == script[0] == 1

    def stable(stdout: bytes) -> list[tuple[int, str, int]]:
        return sorted((r["index"], r["url"], r["status"]) for r in records_of(stdout))

    assert stable(module[1]) == stable(script[1]) == [(0, server.url("/ok"), 200), (1, server.url("/status/404"), 404)]


# -- dedupe and ordered -------------------------------------------------------------------------


def test_dedupe_fetches_each_url_once_and_keeps_the_first_index(fresh_server: TestServer) -> None:
    """--dedupe: one record per distinct URL, at its first index; duplicates still count in the index."""
    a, b, c = (fresh_server.url(p) for p in ("/ok?a", "/ok?b", "/ok?c"))
    result = run_cli("--dedupe", input="\n".join([a, b, a, c, b]) + "\n")
    assert result.returncode == 0, result.stderr
    assert sorted((r["index"], r["url"]) for r in records_of(result.stdout)) == [(0, a), (1, b), (3, c)]
    assert fresh_server.hits("/ok") == 3


def test_ordered_writes_records_in_input_order(server: TestServer) -> None:
    """--ordered: records come out in input order even when later requests finish first."""
    delays = [600, 450, 300, 150, 0]
    lines = "".join(server.url(f"/sleep/{ms}") + "\n" for ms in delays)
    result = run_cli("--ordered", "-c", "5", input=lines)
    assert result.returncode == 0, result.stderr
    assert [r["index"] for r in records_of(result.stdout)] == [0, 1, 2, 3, 4]
