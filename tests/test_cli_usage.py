"""What a new user meets first: the help, usage errors, URL arguments, `-` on a terminal, ^C, the bar."""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from asyncfetch.cli.display import Interruption, ProgressDisplay, format_summary
from asyncfetch.cli.params import PARAMS
from asyncfetch.options import FetchOptions
from asyncfetch.stats import RunStats
from tests.cli_process import COMMAND, cli_env, open_terminal, running, wait_for, write_lines
from tests.conftest import records_of, run_cli
from tests.server import TestServer


# -- the help ---------------------------------------------------------------------------------------
def test_help_fits_a_screen_with_examples_exit_statuses_and_the_queue_commands() -> None:
    """`asyncfetch --help` at 80 columns: usage as errors show it, examples, exit statuses, commands,
    the env-var rule said once, and no per-option `[env var: ...]` lines."""
    result = run_cli("--help", env={"COLUMNS": "80"})
    assert result.returncode == 0
    text = result.stdout.decode()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(lines) <= 90
    assert lines[0] == "Usage: asyncfetch [OPTIONS] [INPUT]..."
    assert "Examples:" in text
    assert "Exit status: 0" in text
    for command in ("enqueue", "work", "collect", "status"):
        assert any(line.startswith(f"  {command} ") for line in lines), command
    assert text.count("ASYNCFETCH_<OPTION>") == 1
    assert "env var" not in text
    assert "README" in text
    usage_error = run_cli("-c", "0", "x").stderr.decode().splitlines()
    assert usage_error[0] == lines[0]


def test_a_queue_commands_help_and_usage_errors_name_that_command() -> None:
    """`asyncfetch work --help` shows work's options only (no --progress), and its usage errors say `work`."""
    help_text = run_cli("work", "--help").stdout.decode()
    assert help_text.startswith("Usage: asyncfetch work [OPTIONS]")
    assert "--concurrency" in help_text
    assert "--progress" not in help_text
    assert "--ordered" not in help_text
    error = run_cli("work", "--claim-after", "0")
    assert error.returncode == 2
    assert error.stderr.decode().splitlines()[0] == "Usage: asyncfetch work [OPTIONS]"


def test_the_queue_commands_complete_in_the_shell() -> None:
    """Completing the first word offers the commands (typer's bash completion protocol)."""
    result = run_cli(
        env={"_ASYNCFETCH_COMPLETE": "complete_bash", "COMP_WORDS": "asyncfetch wo", "COMP_CWORD": "1"},
    )
    assert "work" in result.stdout.decode().split()


# -- usage errors -------------------------------------------------------------------------------------
def test_a_bad_value_on_the_command_line_does_not_blame_the_environment() -> None:
    """`-c abc` names the option and the value; it says nothing of ASYNCFETCH_CONCURRENCY, which is unset."""
    result = run_cli("-c", "abc", "x")
    assert result.returncode == 2
    last = result.stderr.decode().splitlines()[-1]
    assert "--concurrency" in last
    assert "'abc'" in last
    assert "ASYNCFETCH_CONCURRENCY" not in last


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    result = run_cli("x", env={"ASYNCFETCH_CONCURRENCY": "abc"})
    assert result.returncode == 2
    assert "(from ASYNCFETCH_CONCURRENCY)" in result.stderr.decode()


def test_a_misspelt_option_suggests_the_nearest_one_only() -> None:
    result = run_cli("--concurency", "3", "x")
    assert result.returncode == 2
    last = result.stderr.decode().splitlines()[-1]
    assert "did you mean --concurrency?" in last
    assert "--insecure" not in last


# -- URL arguments --------------------------------------------------------------------------------------
def test_a_url_argument_is_fetched_like_curl_mixed_with_files(fresh_server: TestServer, tmp_path: Path) -> None:
    """URLs given as arguments are requests, in argument order with the files' lines (indexes follow)."""
    listing = write_lines(tmp_path / "urls.txt", [fresh_server.url("/ok?from=file")])
    result = run_cli(fresh_server.url("/ok?from=arg"), str(listing), "--ordered")
    assert result.returncode == 0, result.stderr
    records = records_of(result.stdout)
    assert [(r["index"], r["url"], r["status"]) for r in records] == [
        (0, fresh_server.url("/ok?from=arg"), 200),
        (1, fresh_server.url("/ok?from=file"), 200),
    ]


def test_a_bare_host_argument_is_a_url_when_no_such_file_exists(fresh_server: TestServer, tmp_path: Path) -> None:
    """`localhost:PORT/ok` with no file of that name is fetched (with the default scheme)."""
    bare = fresh_server.url("/ok").removeprefix("http://").replace("127.0.0.1", "localhost")
    result = run_cli(bare, cwd=tmp_path)
    records = records_of(result.stdout)
    assert len(records) == 1
    assert records[0]["url"] == f"https://{bare}"  # the contract's default scheme, curl's is http
    assert fresh_server.stats.connections >= 0


def test_a_missing_list_file_is_a_usage_error_not_a_host(tmp_path: Path) -> None:
    """A mistyped `urls.txt` says the file is missing: it is never fetched as https://urls.txt."""
    result = run_cli("urls.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot read urls.txt" in result.stderr.decode()
    assert result.stdout == b""


def test_an_existing_file_wins_over_a_url_look_alike(fresh_server: TestServer, tmp_path: Path) -> None:
    """A file named like a host is read as a file."""
    write_lines(tmp_path / "example.com", [fresh_server.url("/ok")])
    result = run_cli("example.com", cwd=tmp_path)
    assert [r["url"] for r in records_of(result.stdout)] == [fresh_server.url("/ok")]


def test_dash_on_a_terminal_reads_the_terminal(fresh_server: TestServer) -> None:
    """`asyncfetch -` with a terminal on stdin reads what is typed there, to end of input (^D)."""
    controller, terminal = open_terminal()
    try:
        process = subprocess.Popen(
            [*COMMAND, "-"], stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env()
        )
        os.write(controller, fresh_server.url("/ok?typed=1").encode() + b"\n\x04")
        stdout, stderr = process.communicate(timeout=20)
    finally:
        os.close(terminal)
        os.close(controller)
    assert process.returncode == 0, stderr
    assert [r["url"] for r in records_of(stdout)] == [fresh_server.url("/ok?typed=1")]


# -- ^C ---------------------------------------------------------------------------------------------------
def test_the_interrupted_summary_counts_what_is_left_and_gives_the_resume_command(
    fresh_server: TestServer, tmp_path: Path
) -> None:
    """^C mid-run: the summary says how many requests were not fetched, how many were in flight, and
    the exact command that finishes the job; that command then does finish it."""
    urls = [fresh_server.url(f"/ok?n={n}") for n in range(2)]
    urls += [fresh_server.url(f"/sleep/3000?n={n}") for n in range(10)]
    listing = write_lines(tmp_path / "urls.txt", urls)
    out = tmp_path / "out.jsonl"
    with running("-c", "4", "--summary", "-o", str(out), str(listing)) as child:
        wait_for("the /ok records", lambda: out.exists() and out.read_bytes().count(b"\n") >= 2)
        wait_for("/sleep requests in flight", lambda: fresh_server.hits("/sleep") >= 4)
        child.signal(signal.SIGINT)
        finished = child.finish(timeout=10)
    assert finished.returncode == 130
    stderr = finished.stderr.decode()
    done = out.read_bytes().count(b"\n")
    assert f"{len(urls) - done} requests not fetched" in stderr, stderr
    assert "(4 were in flight)" in stderr, stderr
    assert "4 attempts" not in stderr.split("\n")[0]
    resume = next(line for line in stderr.splitlines() if "to finish:" in line).split("to finish: ", 1)[1]
    assert resume == f"asyncfetch --resume -c 4 --summary -o {out} {listing}"


def test_the_interrupted_summary_without_output_file_says_how_to_be_resumable() -> None:
    """Records on stdout cannot be resumed: the summary says to use -o and --resume next time."""
    stats = RunStats()
    text = format_summary(
        stats, interrupted=Interruption(not_fetched=5, unread=None, abandoned_attempts=2, resume=None)
    )
    assert "5 requests read but not fetched, and the rest of the input not read (2 were in flight)" in text
    assert "-o FILE" in text
    assert "--resume" in text


def test_the_summary_counts_connections_and_resumed_tls_sessions() -> None:
    stats = RunStats()
    stats.connections_opened, stats.connections_reused, stats.tls_resumed = 12, 30, 9
    assert "12 connections opened (9 resumed a TLS session), 30 requests on a reused one" in format_summary(stats)
    stats.tls_resumed = 0
    assert "12 connections opened, 30 requests on a reused one" in format_summary(stats)


# -- the bar ----------------------------------------------------------------------------------------------
def _render_bar(width: int, *, errors: int, total: int | None) -> Console:
    stats = RunStats()
    stats.ok = 7
    stats.records = 7 + errors
    if errors:
        stats.errors["dns"] = errors
    stream = io.StringIO()
    display = ProgressDisplay(stream, stats, total=lambda: total, completed=lambda: stats.records)
    console = display._console
    console.width = width
    console.record = True
    display.refresh()
    console.print(display._progress.get_renderable())
    return console


def test_the_bar_uses_red_only_when_there_are_errors() -> None:
    """All well: no red anywhere on the bar; with an error, the error count is red."""
    calm = _render_bar(100, errors=0, total=10).export_html(inline_styles=True)
    assert "#800000" not in calm
    assert "#ff0000" not in calm
    assert "color: red" not in calm.lower()
    alarmed = _render_bar(100, errors=3, total=10).export_text()
    assert "3 err" in alarmed
    styled = _render_bar(100, errors=3, total=10).export_html(inline_styles=True)
    assert "#800000" in styled or "#ff0000" in styled


@pytest.mark.parametrize("width", [40, 50, 80])
def test_the_bar_keeps_every_number_and_the_elapsed_time_at_narrow_widths(width: int) -> None:
    """At 40 to 80 columns the counts, the rate, the outcomes and the elapsed time are all shown, uncut;
    the elapsed time is there when the total is unknown too (standard input)."""
    text = _render_bar(width, errors=1, total=None).export_text()
    for part in ("8/?", "/s", "7 ok", "0 ≥400", "1 err", "0:00:0"):
        assert part in text, (width, text)


def test_json_options_in_records_still_work_with_the_table(fresh_server: TestServer) -> None:
    """Options from the table reach the engine: -X, -H, -d and --headers shape the request and record."""
    result = run_cli("-X", "put", "-H", "X-Test: 1", "-d", "hello", "--headers", fresh_server.url("/echo"))
    record = json.loads(result.stdout)
    assert record["method"] == "PUT"
    assert "headers" in record


# -- the layout ---------------------------------------------------------------------------------------------
def test_the_command_modules_do_not_import_the_composition_root() -> None:
    """No cycle: the queue commands and the fetch command load without cli.app, and the app built by
    build_app() has every command before anything has run."""
    code = (
        "import sys\n"
        "import asyncfetch.cli.dist, asyncfetch.cli.fetch\n"
        "assert 'asyncfetch.cli.app' not in sys.modules, 'cli.app imported by a command module'\n"
        "assert 'asyncfetch.cli.display' not in sys.modules, 'rich loaded before a bar or summary is due'\n"
        "import typer\n"
        "from asyncfetch.cli.app import build_app\n"
        "print(sorted(typer.main.get_command(build_app()).commands))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "['collect', 'enqueue', 'fetch', 'status', 'work']"


def test_every_engine_option_sets_a_fetch_options_field_and_takes_its_default() -> None:
    """The table's engine options name real FetchOptions fields; none declares a default of its own
    (an on/off flag's default is read from the field), so FetchOptions is the one source of defaults."""
    fields = {f.name: f.default for f in dataclasses.fields(FetchOptions)}
    for param in PARAMS.values():
        if param.field is None:
            continue
        assert param.field in fields, param.name
        assert param.default is None, param.name
        if param.is_flag:
            assert param.cli_default() == fields[param.field], param.name
        else:
            assert param.cli_default() is None, param.name


# -- start-up: what each command line loads (no timing: which modules, which a test can pin) ------------------
def _after_main(*args: str, before: str = "", report: str = "sorted(sys.modules)") -> Any:
    """``report`` (a Python expression) once ``asyncfetch ARGS`` has run to its exit in a fresh
    interpreter, ``before`` having run just before ``main`` (both see ``json``, ``sys`` and ``gc``)."""
    probe = (
        "import gc, json, sys\n"
        "from asyncfetch.cli import main\n"
        f"{before}\n"
        "try:\n"
        f"    main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"sys.stderr.write('\\nREPORT ' + json.dumps({report}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    marker = result.stderr.rfind(b"\nREPORT ")
    assert marker >= 0, result.stderr
    return json.loads(result.stderr[marker + len(b"\nREPORT ") :])


def _modules_after_main(*args: str) -> set[str]:
    """The modules loaded once ``asyncfetch ARGS`` has run to its exit, in a fresh interpreter."""
    return set(_after_main(*args))


# Loaded only by the runs that need them (--state, --tls, --http2, a queue command, a bar or
# summary, a CSV table, an interrupted run's --resume line).
_ONLY_WHEN_ASKED = {
    "sqlite3",
    "asyncfetch.state",
    "cryptography",
    "asyncfetch.tlsfacts",
    "h2",
    "asyncfetch.h2conn",
    "redis",
    "asyncfetch.distributed",
    "asyncfetch.cli.dist",
    "asyncfetch.cli.display",
    "csv",
    "shlex",
}


def test_a_plain_run_loads_nothing_only_some_runs_need(tmp_path: Path) -> None:
    """A one-URL run loads no SQLite, TLS certificate parser, HTTP/2, Redis, queue command, rich display,
    csv or shlex; a --state run does load the state store (the probe sees what a run loads)."""
    url = "http://127.0.0.1:1/"  # refused at once: a record, no network
    assert _modules_after_main("-q", "-r", "0", url) & _ONLY_WHEN_ASKED == set()
    with_state = _modules_after_main("-q", "-r", "0", "--state", str(tmp_path / "state.db"), url)
    assert {"sqlite3", "asyncfetch.state"} <= with_state


def test_help_and_version_load_no_engine() -> None:
    """--help loads neither the engine (httpx, asyncio) nor the queue commands; --version not even
    typer or the typing module (a third of its start-up)."""
    helped = _modules_after_main("--help")
    assert {"httpx", "asyncio", "asyncfetch.engine", "asyncfetch.cli.dist", "urllib.request"} & helped == set()
    assert "asyncfetch.cli.fetch" in helped  # the probe ran the command
    version = _modules_after_main("--version")
    assert {"typer", "typing", "asyncfetch.cli.app"} & version == set()


def test_start_up_does_not_collect_garbage_and_the_run_does() -> None:
    """Until the fetch starts the cyclic collector is off (what start-up creates lives as long as
    the process: collecting it was ~5 % of a one-URL run); run_loop turns it on, and main() called
    in a process leaves it on."""
    # A collection before run_loop froze the imported objects is one made during start-up.
    record = (
        "starts = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and starts.append(gc.get_freeze_count()))"
    )
    report = "{'during_start_up': starts.count(0), 'enabled_after': gc.isenabled()}"
    url = "http://127.0.0.1:1/"  # refused at once: a record, no network
    assert _after_main("-q", "-r", "0", url, before=record, report=report) == {
        "during_start_up": 0,
        "enabled_after": True,
    }
    assert _after_main("--help", before=record, report=report)["enabled_after"] is True


def test_the_run_loop_collects_garbage_though_start_up_did_not() -> None:
    """run_loop switches the collector on (main() switched it off for start-up)."""
    from asyncfetch.cli.runner import run_loop

    async def collecting(control: object) -> int:
        del control
        return int(gc.isenabled())

    gc.disable()
    try:
        assert run_loop(collecting) == 1
    finally:
        gc.enable()
