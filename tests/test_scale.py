"""Scale: -c up to 100000, the open-file limit raised or the concurrency cut with one warning, 20,000 requests."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys

import pytest

from tests.conftest import records_of, run_cli
from tests.server import TestServer

# What the CLI keeps for itself besides connections (runner._FD_RESERVE is 64): -c N needs
# about N + this many open files.
FD_RESERVE = 64


def run_cli_with_open_files(soft: int, hard: int, *args: str, input: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m asyncfetch ARGS`` in a process whose open-file limit is ``soft:hard``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCFETCH_")}
    command = [sys.executable, "-m", "asyncfetch", *args]
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("needs prlimit (util-linux) to start a process with a lower open-file limit")
    return subprocess.run(
        [prlimit, f"--nofile={soft}:{hard}", *command],
        input=input.encode(),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_concurrency_100000_is_accepted(fresh_server: TestServer) -> None:
    """-c 100000 runs; it warns only when the process may not have the open files that needs."""
    urls = [fresh_server.url(f"/ok?n={i}") for i in range(3)]
    result = run_cli("-c", "100000", input="\n".join(urls) + "\n")
    assert result.returncode == 0, result.stderr
    records = records_of(result.stdout)
    assert len(records) == 3
    assert all(record["ok"] for record in records)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= 100_000 + FD_RESERVE:
        assert result.stderr == b""
    else:
        assert len(result.stderr.decode().splitlines()) == 1


@pytest.mark.parametrize("value", ["100001", "0", "-5"])
def test_concurrency_outside_1_to_100000_is_a_usage_error(value: str) -> None:
    """-c 0, negative or over 100000 exits 2 with a short message naming the option, and fetches nothing."""
    result = run_cli("-q", "-c", value, input="http://127.0.0.1:9/never\n")
    assert result.returncode == 2
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert 1 <= len(lines) <= 3
    assert "concurrency" in result.stderr.decode().lower()


def test_a_concurrency_the_process_cannot_have_is_cut_with_one_warning(fresh_server: TestServer) -> None:
    """Under `ulimit -n 256`, -c 100000 prints a single warning line and every request still succeeds."""
    urls = [fresh_server.url(f"/sleep/200?n={i}") for i in range(300)]
    result = run_cli_with_open_files(256, 256, "-c", "100000", input="\n".join(urls) + "\n")
    assert result.returncode == 0, result.stderr
    warning = result.stderr.decode().splitlines()
    assert len(warning) == 1, warning
    assert "warning" in warning[0]
    assert "100000" in warning[0]
    assert "256" in warning[0]
    records = records_of(result.stdout)
    assert len(records) == 300
    assert [record for record in records if not record["ok"]] == []
    assert fresh_server.stats.max_in_flight < 256  # it kept within what it could have


def test_quiet_silences_the_open_file_warning(fresh_server: TestServer) -> None:
    """-q under cron: the concurrency is still cut to what the process can have, but nothing is said."""
    urls = [fresh_server.url(f"/ok?n={i}") for i in range(20)]
    result = run_cli_with_open_files(256, 256, "-q", "-c", "100000", input="\n".join(urls) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert len(records_of(result.stdout)) == 20


def test_the_open_file_limit_is_raised_as_far_as_the_concurrency_needs(fresh_server: TestServer) -> None:
    """With limits 256 (soft) and 4096 (hard), -c 1000 raises the soft limit: 600 requests run at once, no warning."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip("this process may not have 4096 open files")
    urls = [fresh_server.url(f"/sleep/1000?n={i}") for i in range(600)]
    result = run_cli_with_open_files(256, 4096, "-q", "-c", "1000", input="\n".join(urls) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    records = records_of(result.stdout)
    assert len(records) == 600
    assert all(record["ok"] for record in records)
    assert fresh_server.stats.max_in_flight > 256  # more connections than the soft limit allowed


@pytest.mark.slow
@pytest.mark.timeout(180)  # the child's own deadline (120 s) is the one that matters on a busy machine
def test_20000_requests_at_concurrency_500_are_all_answered(fresh_server: TestServer) -> None:
    """20,000 requests at -c 500 against one local server: one ok record per request, each index once."""
    count = 20_000
    urls = "".join(fresh_server.url(f"/ok?n={i}") + "\n" for i in range(count))
    result = run_cli("-q", "-c", "500", input=urls, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == b""
    records = records_of(result.stdout)
    assert sorted(record["index"] for record in records) == list(range(count))
    assert [record for record in records if not record["ok"]][:3] == []
    assert len(fresh_server.stats.requests) == count
