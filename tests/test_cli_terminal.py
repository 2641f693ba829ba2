"""The CLI in front of a real terminal (a pseudo-terminal): the progress bar, the summary, usage on a tty."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cli_process import COMMAND, cli_env, open_terminal, run_on_terminal, write_lines
from tests.conftest import records_of, run_cli
from tests.server import TestServer

REQUESTS = 12


@pytest.fixture
def listing(server: TestServer, tmp_path: Path) -> Path:
    """A file of twelve requests slow enough (0.2 s each, 3 at a time) for the bar to redraw."""
    return write_lines(tmp_path / "urls.txt", [server.url(f"/sleep/200?n={n}") for n in range(REQUESTS)])


def test_the_progress_bar_is_drawn_on_a_terminal_stderr_and_stdout_keeps_only_json(listing: Path) -> None:
    """stderr a terminal, stdout a pipe: the bar (label, done/total) is drawn on the terminal and no
    record reaches it, while stdout holds exactly the JSON records."""
    run = run_on_terminal("-c", "3", str(listing))
    assert run.returncode == 0, run.terminal_text
    assert len(records_of(run.stdout)) == REQUESTS
    text = run.terminal_text
    assert "asyncfetch" in text
    assert f"{REQUESTS}/{REQUESTS}" in text
    assert "━" in text
    assert '"url"' not in text
    assert "Traceback" not in text


def test_the_summary_appears_by_default_on_a_terminal(listing: Path) -> None:
    """With stderr a terminal and no switch, the closing summary is printed there."""
    run = run_on_terminal("-c", "3", str(listing))
    assert run.returncode == 0
    assert f"{REQUESTS} requests in" in run.terminal_text


def test_quiet_shows_neither_bar_nor_summary_on_a_terminal(listing: Path) -> None:
    """-q on a terminal: nothing at all on stderr; the records still go to stdout."""
    run = run_on_terminal("-q", "-c", "3", str(listing))
    assert run.returncode == 0
    assert len(records_of(run.stdout)) == REQUESTS
    assert run.terminal == b""


def test_no_progress_on_a_terminal_keeps_the_summary_only(listing: Path) -> None:
    """--no-progress on a terminal: no bar, but the summary is still printed."""
    run = run_on_terminal("--no-progress", "-c", "3", str(listing))
    assert run.returncode == 0
    assert "━" not in run.terminal_text
    assert f"{REQUESTS}/{REQUESTS}" not in run.terminal_text
    assert f"{REQUESTS} requests in" in run.terminal_text


def test_without_a_terminal_there_is_no_progress_and_no_summary_by_default(listing: Path) -> None:
    """stdin, stdout and stderr all pipes and no switch: stderr stays empty."""
    result = run_cli("-c", "6", str(listing))
    assert result.returncode == 0
    assert len(records_of(result.stdout)) == REQUESTS
    assert result.stderr == b""


@pytest.mark.parametrize("args", [[], ["-c", "5"]], ids=["no-options", "with-options"])
def test_no_input_with_a_terminal_on_stdin_prints_usage_and_exits_2_at_once(
    fresh_server: TestServer, args: list[str]
) -> None:
    """No INPUT and a terminal on stdin: usage on stderr, exit 2 at once, never a silent wait."""
    controller, terminal = open_terminal()
    try:
        result = subprocess.run(
            [*COMMAND, *args],
            stdin=terminal,
            capture_output=True,
            env=cli_env(),
            timeout=10,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Usage" in stderr
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) <= 3
    assert result.stdout == b""
    assert fresh_server.stats.connections == 0


def test_records_start_on_a_line_of_their_own_when_stdout_shares_the_terminal(listing: Path) -> None:
    """Nothing redirected (stdout and stderr one terminal): each record starts a line, never glued to the bar."""
    run = run_on_terminal("-c", "3", str(listing), stdout_too=True)
    assert run.returncode == 0
    text = run.terminal_text
    starts = [at for at in range(len(text)) if text.startswith('{"url"', at)]
    assert len(starts) == REQUESTS
    assert all(at == 0 or text[at - 1] in "\r\n" for at in starts), text
