"""The distributed commands (enqueue, work, collect, status) end to end, against a real redis-server.

Every test starts its own redis-server on 127.0.0.1 (a free port, a temp dir of its own) and
stops it at the end; the commands run as subprocesses, exactly as a user runs them. The rule
they hold the queue to: every queued request yields exactly one record at the collector, with
a worker killed with -9, a collector restarted, Redis restarted (appendonly yes), and three
workers racing for chunks. The Redis password never shows in any command's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import trustme
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

import asyncfetch
from asyncfetch import distributed
from asyncfetch.distributed import collector
from asyncfetch.distributed.keys import ACK_IF_COMPLETE, RECORD_ONCE
from tests.cli_process import cli_env
from tests.conftest import records_of, run_cli, unused_port
from tests.server import TestServer

_FOUND = shutil.which("redis-server")
if _FOUND is None:
    pytest.skip(
        "redis-server is not installed (Debian: apt-get install redis-server); "
        "the distributed tests run against a real one",
        allow_module_level=True,
    )
REDIS_BINARY: str = _FOUND

QUEUE = distributed.QueueKeys("default")
T = TypeVar("T")
# Fields that differ between two runs of the same request.
TIMING_FIELDS = ("elapsed_ms", "fetched_at")


# -- a real redis-server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A CA and the server certificate (for 127.0.0.1) it signed, as PEM files."""

    ca: Path
    cert: Path
    key: Path


class RedisServer:
    """A redis-server on 127.0.0.1 in a directory of its own; restartable on the same port and dir."""

    def __init__(
        self, directory: Path, *, password: str | None = None, appendonly: bool = False, tls: TlsFiles | None = None
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = unused_port()
        self.password = password
        self.appendonly = appendonly
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            REDIS_BINARY,
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.tls is not None:
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            args += ["--port", str(self.port)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        return args

    def client(self) -> redis.Redis:
        """A plain client for the test's own checks (the commands under test bring their own)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            ssl=self.tls is not None,
            ssl_ca_certs=str(self.tls.ca) if self.tls is not None else None,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),  # the test decides when to try again (SHUTDOWN would retry for 4 s)
        )

    def log_tail(self) -> str:
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            self._args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 15
        while True:
            code = self.process.poll()
            if code is not None:
                assert self.process.stderr is not None
                raise RuntimeError(
                    f"redis-server exited with {code}: {self.process.stderr.read().decode(errors='replace')}"
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(redis.RedisError), self.client() as probe:
                if probe.ping():
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within 15 s: {self.log_tail()}")
            time.sleep(0.05)

    def shutdown(self) -> None:
        """SHUTDOWN through the protocol (what an operator's restart does): the AOF is flushed first."""
        assert self.process is not None
        with self.client() as admin:
            admin.shutdown()
        self.process.wait(15)
        self._close_pipes()

    def stop(self) -> None:
        """Stop the server if it runs (SIGTERM, then SIGKILL after 10 s) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers of this test's own: ``make(password=..., appendonly=..., tls=...)``; all stop at the end."""
    started: list[RedisServer] = []

    def make(*, password: str | None = None, appendonly: bool = False, tls: TlsFiles | None = None) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", password=password, appendonly=appendonly, tls=tls)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(redis_servers: Callable[..., RedisServer]) -> RedisServer:
    """A plain redis-server of this test's own (no password, no persistence)."""
    return redis_servers()


# -- the commands as subprocesses -------------------------------------------------------------------


@dataclass
class Started:
    """A running ``python -m asyncfetch COMMAND``; its stdout and stderr go to files."""

    name: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def wait(self, timeout: float) -> int:
        """Its exit status; fails the test (after killing it) when it is still running after ``timeout`` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s; stderr: {self.stderr[-2000:]!r}"
            ) from None

    @property
    def stdout(self) -> bytes:
        return self.stdout_path.read_bytes()

    @property
    def stderr(self) -> bytes:
        return self.stderr_path.read_bytes()


@dataclass
class Children:
    """Every process a test starts; all still running are killed (-9) and reaped at its end."""

    directory: Path
    started: list[Started] = field(default_factory=list)

    def start(self, *args: str, name: str, env: Mapping[str, str] | None = None, stdin: Path | None = None) -> Started:
        out, err = self.directory / f"{name}.out", self.directory / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            with stdin.open("rb") if stdin is not None else open(os.devnull, "rb") as source:
                process = subprocess.Popen(
                    [sys.executable, "-m", "asyncfetch", *args],
                    stdin=source,
                    stdout=stdout,
                    stderr=stderr,
                    env=cli_env(env),
                )
        child = Started(name, process, out, err)
        self.started.append(child)
        return child

    def kill_all(self) -> None:
        for child in self.started:
            if child.process.poll() is None:
                child.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(10)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    """Start asyncfetch subprocesses that are killed at the end of the test, whatever happens."""
    directory = tmp_path / "children"
    directory.mkdir()
    running = Children(directory)
    try:
        yield running
    finally:
        running.kill_all()


def queue_cli(
    server: RedisServer, command: str, *args: str, input: str | None = None, timeout: float = 30, env: Any = None
) -> subprocess.CompletedProcess[bytes]:
    """``asyncfetch COMMAND --redis URL ARGS`` to its end."""
    return run_cli(command, "--redis", server.url, *args, input=input, timeout=timeout, env=env)


def enqueue_ok(server: RedisServer, *args: str, input: str | None = None) -> None:
    result = queue_cli(server, "enqueue", *args, input=input)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""


def collected(server: RedisServer, *args: str) -> list[dict[str, Any]]:
    """Every record ``collect`` writes to stdout (after the fact)."""
    result = queue_cli(server, "collect", *args)
    assert result.returncode in (0, 1), result.stderr
    return records_of(result.stdout)


def queue_status(server: RedisServer, *args: str) -> dict[str, Any]:
    result = queue_cli(server, "status", *args)
    assert result.returncode == 0, result.stderr
    state: dict[str, Any] = json.loads(result.stdout)
    return state


def work_until_done(
    server: RedisServer, count: int, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """A worker (no --burst: that one polls 2 s more before it exits) stopped by SIGTERM once all ``count``
    requests have their record; it must stop with 130, as the contract says for SIGTERM."""
    command = [sys.executable, "-m", "asyncfetch", "work", "--redis", server.url, *args]
    worker = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(env)
    )
    try:
        wait_until(lambda: worker.poll() is not None or done_count(server) >= count, 30, f"{count} records")
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=15)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)
    assert worker.returncode == 130, err
    return subprocess.CompletedProcess(command, worker.returncode, out, err)


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def done_count(server: RedisServer) -> int:
    """Requests that have their record (the ``done`` bitmap the module docstring describes)."""
    with server.client() as probe:
        return int(probe.bitcount(QUEUE.done))


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def assert_exactly_once(records: Sequence[Mapping[str, Any]], count: int) -> None:
    """Indexes 0..count-1, each exactly once."""
    seen = Counter(record["index"] for record in records)
    doubled = sorted(index for index, times in seen.items() if times > 1)
    missing = sorted(set(range(count)) - set(seen))
    extra = sorted(set(seen) - set(range(count)))
    assert (doubled, missing, extra) == ([], [], []), (
        f"{len(records)} records for {count} requests: doubled {doubled[:20]}, missing {missing[:20]}, "
        f"unknown {extra[:20]}"
    )


def without_timing(record: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in TIMING_FIELDS}


# -- the commands -----------------------------------------------------------------------------------


def test_help_names_the_queue_commands() -> None:
    """`asyncfetch --help` tells the user about enqueue, work, collect and status."""
    result = run_cli("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for command in ("enqueue", "work", "collect", "status"):
        assert command in text


def test_enqueue_work_collect_yields_one_record_per_request(
    redis_server: RedisServer, fresh_server: TestServer, tmp_path: Path
) -> None:
    """Requests put on the queue are fetched once by a worker and collected once each, under their input index."""
    count = 23
    urls = [fresh_server.url(f"/ok?i={i}") for i in range(count)]
    source = write_lines(tmp_path / "urls.txt", ["# a comment", "", *urls[:10], "   ", *urls[10:]])
    result = queue_cli(redis_server, "enqueue", "--chunk-size", "5", str(source))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert b"23" in result.stderr

    work = queue_cli(redis_server, "work", "--burst", "-q", "-c", "4")
    assert work.returncode == 0, work.stderr
    assert work.stdout == b""  # records go to the queue, not to the worker's stdout

    finished = queue_cli(redis_server, "collect")
    assert finished.returncode == 0, finished.stderr
    records = records_of(finished.stdout)
    assert_exactly_once(records, count)
    for record in records:
        assert record["url"] == urls[record["index"]]
        assert (record["status"], record["ok"], record["error"]) == (200, True, None)
    assert Counter(fresh_server.stats.paths()) == Counter(f"/ok?i={i}" for i in range(count))


def test_indexes_are_global_across_chunks_inputs_and_enqueues(
    redis_server: RedisServer, server: TestServer, tmp_path: Path, children: Children
) -> None:
    """Indexes run 0..N-1 across chunks, INPUT files, stdin and separate (even concurrent) enqueue runs."""
    first = write_lines(tmp_path / "a.txt", [server.url(f"/ok?a={i}") for i in range(7)])
    second = write_lines(tmp_path / "b.txt", [server.url(f"/ok?b={i}") for i in range(2)])
    third = write_lines(tmp_path / "c.txt", [server.url(f"/ok?c={i}") for i in range(3)])
    enqueue_ok(redis_server, "--chunk-size", "3", str(first))
    enqueue_ok(redis_server, "--chunk-size", "3", "-", input="".join(server.url(f"/ok?s={i}\n") for i in range(4)))
    enqueue_ok(redis_server, "--chunk-size", "4", str(second), str(third))
    in_order = (
        [server.url(f"/ok?a={i}") for i in range(7)]
        + [server.url(f"/ok?s={i}") for i in range(4)]
        + [server.url(f"/ok?b={i}") for i in range(2)]
        + [server.url(f"/ok?c={i}") for i in range(3)]
    )
    racers = []
    for name in ("x", "y"):
        lines = write_lines(tmp_path / f"{name}.txt", [server.url(f"/ok?{name}={i}") for i in range(60)])
        racers.append(
            children.start("enqueue", "--redis", redis_server.url, "--chunk-size", "4", str(lines), name=name)
        )
    for racer in racers:
        assert racer.wait(30) == 0, racer.stderr

    total = len(in_order) + 120
    work_until_done(redis_server, total, "-q", "-c", "20")
    records = collected(redis_server)
    assert_exactly_once(records, total)
    by_index = {record["index"]: record["url"] for record in records}
    assert [by_index[i] for i in range(len(in_order))] == in_order
    assert sorted(by_index[i] for i in range(len(in_order), total)) == sorted(
        server.url(f"/ok?{name}={i}") for name in ("x", "y") for i in range(60)
    )


def test_request_options_given_at_enqueue_reach_the_server(
    redis_server: RedisServer, fresh_server: TestServer, tmp_path: Path
) -> None:
    """-X, -H, -d and -A given to enqueue shape each request as the one-machine command would."""
    options = ["-X", "put", "-H", "X-Team: blue", "-H", "X-Other: 2", "-d", "payload-body", "-A", "probe/1.0"]

    def lines(run: str) -> list[str]:
        return [
            fresh_server.url(f"/echo?run={run}&n=0"),
            json.dumps({"url": fresh_server.url(f"/echo?run={run}&n=1"), "headers": {"X-Team": "red"}}),
            json.dumps({"url": fresh_server.url(f"/echo?run={run}&n=2"), "method": "DELETE"}),
            json.dumps({"url": fresh_server.url(f"/echo?run={run}&n=3"), "json": {"k": [1, "é"]}}),
        ]

    single = run_cli(*options, "-q", str(write_lines(tmp_path / "single.txt", lines("single"))))
    assert single.returncode == 0, single.stderr
    enqueue_ok(redis_server, *options, str(write_lines(tmp_path / "queue.txt", lines("queue"))))
    work_until_done(redis_server, 4, "-q", "--body")  # an engine option of the worker
    records = collected(redis_server)
    assert_exactly_once(records, 4)
    echoed = json.loads(next(r for r in records if r["index"] == 0)["body"])
    assert (echoed["method"], echoed["body"], echoed["headers"]["x-team"]) == ("PUT", "payload-body", "blue")

    shown = ("x-team", "x-other", "user-agent", "content-type")
    seen: dict[tuple[str, str], tuple[str, bytes, dict[str, str | None]]] = {}
    for request in fresh_server.stats.requests:
        run, n = request.path.split("run=")[1].split("&n=")
        seen[run, n] = (request.method, request.body, {name: request.headers.get(name) for name in shown})
    for n in "0123":
        assert seen["queue", n] == seen["single", n], n
    assert seen["queue", "0"] == (
        "PUT",
        b"payload-body",
        {"x-team": "blue", "x-other": "2", "user-agent": "probe/1.0", "content-type": None},
    )
    assert seen["queue", "1"][2]["x-team"] == "red"  # the line's own header wins
    assert seen["queue", "2"][0] == "DELETE"
    assert json.loads(seen["queue", "3"][1]) == {"k": [1, "é"]}
    single_methods = sorted((r["index"], r["method"]) for r in records_of(single.stdout))
    assert sorted((r["index"], r["method"]) for r in records) == single_methods


MIXED_LINES = [
    "{ok}/ok",
    "{ok}/status/404",
    "ftp://example.invalid/file",
    "http://",
    "{bad json",
    '{"url": "{ok}/ok?u=1", "bogus": 1}',
    '{"url": 5}',
    '["a", "list"]',
    '{"url": "{ok}/ok?id=1", "id": {"k": [1, null]}}',
    '{"url": "{ok}/ok?id=2", "id": null}',
    "# a comment, no record",
    "",
]


def mixed_input(tmp_path: Path, server: TestServer) -> Path:
    return write_lines(tmp_path / "mixed.txt", [line.replace("{ok}", server.base) for line in MIXED_LINES])


@pytest.mark.parametrize(
    "options",
    [
        pytest.param([], id="plain"),
        pytest.param(["-H", "X-A: 1", "-A", "probe/2"], id="headers"),
    ],
)
def test_invalid_lines_yield_the_same_records_as_the_one_machine_command(
    redis_server: RedisServer, server: TestServer, tmp_path: Path, options: list[str]
) -> None:
    """Invalid lines reach the collector as invalid_url/invalid_input records, the same as `asyncfetch` writes."""
    source = mixed_input(tmp_path, server)
    single = run_cli(*options, "-q", str(source))
    assert single.returncode == 1  # error records: exit 1
    enqueue_ok(redis_server, *options, str(source))
    work = queue_cli(redis_server, "work", "--burst", "-q")
    assert work.returncode == 1, work.stderr  # its records include failures
    result = queue_cli(redis_server, "collect")
    assert result.returncode == 1, result.stderr  # the same exit status as the one-machine run
    records = records_of(result.stdout)
    expected = records_of(single.stdout)
    assert_exactly_once(records, len(expected))
    assert sorted((without_timing(r) for r in records), key=lambda r: r["index"]) == sorted(
        (without_timing(r) for r in expected), key=lambda r: r["index"]
    )
    kinds = Counter(r["error"]["kind"] for r in records if r["error"] is not None)
    assert kinds["invalid_url"] >= 2
    assert kinds["invalid_input"] >= 3


def test_invalid_json_line_keeps_the_method_and_body_options(
    redis_server: RedisServer, server: TestServer, tmp_path: Path
) -> None:
    """With -X/-d at enqueue, invalid lines give the same records (method included) as the one-machine command."""
    source = mixed_input(tmp_path, server)
    options = ["-X", "PATCH", "-d", "x=1"]
    single = run_cli(*options, "-q", str(source))
    enqueue_ok(redis_server, *options, str(source))
    expected = {r["index"]: without_timing(r) for r in records_of(single.stdout)}
    work_until_done(redis_server, len(expected), "-q")
    records = collected(redis_server)
    assert {r["index"]: without_timing(r) for r in records} == expected


def test_enqueue_dedupe_keeps_the_indexes_of_the_one_machine_command(
    redis_server: RedisServer, server: TestServer, tmp_path: Path
) -> None:
    """enqueue --dedupe queues each URL once, and indexes count the skipped duplicates as `asyncfetch --dedupe` does."""
    a, b, c = (server.url(f"/ok?d={name}") for name in "abc")
    source = write_lines(tmp_path / "dupes.txt", [a, b, a, c, b])
    single = run_cli("--dedupe", "-q", str(source))
    assert single.returncode == 0, single.stderr
    enqueue_ok(redis_server, "--dedupe", str(source))
    work_until_done(redis_server, 3, "-q")
    records = collected(redis_server)
    assert len(records) == 3
    assert sorted((r["index"], r["url"]) for r in records) == sorted(
        (r["index"], r["url"]) for r in records_of(single.stdout)
    )


def test_status_reports_counts_chunks_and_workers(redis_server: RedisServer, server: TestServer) -> None:
    """status prints the queue's state as JSON: queued, done, failed, chunks waiting and in flight, per worker."""
    lines = [server.url(f"/ok?i={i}") for i in range(10)] + [server.url("/status/500"), "ftp://nowhere.invalid/"]
    empty = queue_status(redis_server)
    assert (empty["queued"], empty["done"], empty["workers"]) == (0, 0, {})
    enqueue_ok(redis_server, "--chunk-size", "5", "-", input="\n".join(lines) + "\n")
    enqueue_ok(redis_server, "--queue", "other", "-", input=server.url("/ok?other\n"))

    before = queue_status(redis_server)
    assert before["queue"] == "default"
    assert before["queued"] == 12
    assert before["done"] == 0
    assert before["in_progress_or_waiting"] == 12
    assert before["chunks_waiting"] == 3
    assert before["chunks_in_flight"] == 0
    assert before["workers"] == {}

    work = queue_cli(redis_server, "work", "--burst", "-q", "--name", "alpha")
    assert work.returncode == 1, work.stderr  # the ftp line is an error record
    after = queue_status(redis_server)
    assert after["queued"] == 12
    assert after["done"] == 12
    assert after["in_progress_or_waiting"] == 0
    assert (after["ok"], after["http_errors"], after["failed"]) == (10, 1, 1)
    assert (after["chunks_waiting"], after["chunks_in_flight"]) == (0, 0)
    assert after["results_stored"] == 12
    assert list(after["workers"]) == ["alpha"]
    alpha = after["workers"]["alpha"]
    assert alpha["done"] + alpha["failed"] == 12
    assert alpha["failed"] == 1
    assert alpha["chunks_in_flight"] == 0
    assert isinstance(alpha["pid"], int)
    assert isinstance(alpha["host"], str)
    assert 0 <= alpha["seen_s_ago"] < 30

    other = queue_status(redis_server, "--queue", "other")
    assert (other["queue"], other["queued"], other["done"]) == ("other", 1, 0)


def test_collect_writes_the_whole_summary_as_json(
    redis_server: RedisServer, server: TestServer, tmp_path: Path
) -> None:
    """collect --summary-json FILE: the one-machine summary object over the queue's records, hosts included;
    connections are null (the records do not carry them)."""
    lines = [server.url("/ok?a"), server.url("/ok?b"), server.url("/status/500"), "http://nowhere.invalid/"]
    enqueue_ok(redis_server, "-", input="\n".join(lines) + "\n")
    work = queue_cli(redis_server, "work", "--burst", "-q", "-r", "0")
    assert work.returncode == 1, work.stderr  # the .invalid host is an error record
    target = tmp_path / "summary.json"
    result = queue_cli(redis_server, "collect", "-q", "--summary-json", str(target))
    assert result.returncode == 1, result.stderr
    summary = json.loads(target.read_text(encoding="utf-8"))
    assert (summary["requests"], summary["ok"], summary["http_errors"], summary["errors"]) == (4, 2, 1, 1)
    assert summary["errors_by_kind"] == {"dns": 1}
    assert summary["connections"] == {"opened": None, "reused": None, "tls_resumed": None}
    host = server.url("/").split("://", 1)[1].rstrip("/")
    assert summary["hosts"]["by_host"][host]["requests"] == 3
    assert summary["hosts"]["most_failing"][0] == "nowhere.invalid"


def test_collect_refuses_a_directory_for_the_summary_json(redis_server: RedisServer, tmp_path: Path) -> None:
    """--summary-json naming a directory is a usage error before anything is collected."""
    result = queue_cli(redis_server, "collect", "--summary-json", str(tmp_path))
    assert result.returncode == 2
    assert b"is a directory" in result.stderr


# -- nothing lost, nothing doubled ------------------------------------------------------------------


@pytest.mark.slow
def test_worker_killed_mid_chunk_is_taken_over_exactly_once(
    redis_server: RedisServer, fresh_server: TestServer, tmp_path: Path, children: Children
) -> None:
    """A worker killed with -9 mid-chunk loses its unfinished requests to another worker after --claim-after
    seconds, and the collector still gets exactly one record per request."""
    count, claim_after = 40, 2.0
    urls = [fresh_server.url(f"/sleep/300?i={i}") for i in range(count)]
    enqueue_ok(redis_server, "--chunk-size", "10", str(write_lines(tmp_path / "urls.txt", urls)))
    victim = children.start(
        "work", "--redis", redis_server.url, "--name", "victim", "-c", "4", "--claim-after", str(claim_after), "-q",
        name="victim",
    )  # fmt: skip
    wait_until(lambda: done_count(redis_server) >= 5, 30, "the first worker's first records")
    # Read straight from Redis: a `status` subprocess can take seconds to start on a loaded machine,
    # by which time the victim may have finished everything.
    with redis_server.client() as probe:
        consumers: Any = probe.xinfo_consumers(QUEUE.jobs, distributed.GROUP)
        busy_done = int(probe.bitcount(QUEUE.done))
    assert {consumer["name"]: consumer["pending"] for consumer in consumers}.get(b"victim", 0) >= 1
    assert 0 < busy_done < count
    victim.process.kill()
    killed_at = time.monotonic()
    victim.wait(10)
    done_at_kill = done_count(redis_server)
    assert done_at_kill < count

    heir = children.start(
        "work", "--redis", redis_server.url, "--name", "heir", "--burst", "-c", "8", "--claim-after", str(claim_after),
        "-q", name="heir",
    )  # fmt: skip
    assert heir.wait(45) == 0, heir.stderr
    records = collected(redis_server)
    assert_exactly_once(records, count)
    assert all(record["ok"] for record in records)

    # Requests the victim had in flight were fetched again, but only after the stated delay.
    starts: dict[str, list[float]] = {}
    for request in fresh_server.stats.requests:
        starts.setdefault(request.path, []).append(request.started)
    assert set(starts) == {f"/sleep/300?i={i}" for i in range(count)}
    again = {path: times for path, times in starts.items() if len(times) > 1}
    assert again, "the victim had requests in flight: someone must have fetched them again"
    assert all(len(times) == 2 for times in again.values())
    # Heartbeats renew a chunk every claim_after/4 s, so silence starts at most that long before the kill.
    earliest = min(max(times) for times in again.values())
    assert earliest - killed_at >= claim_after * 0.75 - 0.1

    final = queue_status(redis_server)
    assert final["done"] == count
    assert final["chunks_in_flight"] == 0
    workers = final["workers"]
    assert workers["victim"]["done"] + workers["heir"]["done"] == count
    assert workers["heir"]["done"] > 0


@pytest.mark.slow
def test_collector_restarted_writes_each_record_once(
    redis_server: RedisServer, server: TestServer, tmp_path: Path, children: Children
) -> None:
    """collect -o FILE killed with -9 (a torn last line included) and run again writes every record exactly once."""
    count = 60
    enqueue_ok(
        redis_server, "--chunk-size", "5", "-", input="".join(server.url(f"/sleep/100?i={i}\n") for i in range(count))
    )
    output = tmp_path / "records.jsonl"
    collector = children.start("collect", "--redis", redis_server.url, "--follow", "-o", str(output), name="collector")
    worker = children.start("work", "--redis", redis_server.url, "--burst", "-q", "-c", "6", name="worker")

    def lines_written() -> int:
        return output.read_bytes().count(b"\n") if output.exists() else 0

    wait_until(lambda: lines_written() >= 10, 30, "the collector's first records")
    collector.process.kill()
    collector.wait(10)
    # A kill can leave a torn line: cut the last record in half.
    data = output.read_bytes()
    assert data.endswith(b"\n")
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    output.write_bytes(data[: last_start + (len(data) - last_start) // 2])
    assert worker.wait(45) == 0, worker.stderr

    again = queue_cli(redis_server, "collect", "-o", str(output))
    assert again.returncode == 0, again.stderr
    assert again.stdout == b""
    assert_exactly_once(records_of(output.read_bytes()), count)
    snapshot = output.read_bytes()
    follow = queue_cli(redis_server, "collect", "--follow", "-o", str(output), timeout=20)
    assert follow.returncode == 0, follow.stderr
    assert output.read_bytes() == snapshot  # a third run has nothing left to write


@pytest.mark.slow
def test_three_workers_share_the_queue_and_fetch_each_request_once(
    redis_server: RedisServer, fresh_server: TestServer, tmp_path: Path, children: Children
) -> None:
    """Three worker processes each take part of the queue, and every request is fetched and recorded exactly once."""
    count = 300
    names = ("w1", "w2", "w3")
    workers = [
        children.start("work", "--redis", redis_server.url, "--name", name, "-c", "5", "-q", name=name)
        for name in names
    ]

    def announced() -> bool:
        with redis_server.client() as probe:
            return all(probe.exists(QUEUE.worker(name)) for name in names)

    wait_until(announced, 30, "three workers to announce themselves")
    output = tmp_path / "live.jsonl"
    collector = children.start("collect", "--redis", redis_server.url, "--follow", "-o", str(output), name="collect")
    enqueue_ok(
        redis_server,
        "--chunk-size",
        "5",
        "-",
        input="".join(fresh_server.url(f"/sleep/30?i={i}\n") for i in range(count)),
    )
    assert collector.wait(60) == 0, collector.stderr  # --follow ends by itself once all is collected
    assert_exactly_once(records_of(output.read_bytes()), count)

    state = queue_status(redis_server)
    for worker in workers:
        worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(15) == 130, worker.stderr  # interrupted by SIGTERM, as the contract says
        assert worker.stdout == b""
    assert state["done"] == count
    assert set(state["workers"]) == set(names)
    per_worker = {name: state["workers"][name]["done"] for name in names}
    assert sum(per_worker.values()) == count
    assert all(done > 0 for done in per_worker.values()), per_worker
    assert Counter(fresh_server.stats.paths()) == Counter(f"/sleep/30?i={i}" for i in range(count))


@pytest.mark.slow
def test_redis_restart_with_appendonly_loses_nothing(
    redis_servers: Callable[..., RedisServer], server: TestServer, tmp_path: Path, children: Children
) -> None:
    """A Redis restarted mid-run (appendonly yes) loses nothing: worker and collector ride it out, each record once."""
    redis_server = redis_servers(appendonly=True)
    count = 45
    enqueue_ok(
        redis_server, "--chunk-size", "5", "-", input="".join(server.url(f"/sleep/150?i={i}\n") for i in range(count))
    )
    output = tmp_path / "records.jsonl"
    collector = children.start("collect", "--redis", redis_server.url, "--follow", "-o", str(output), name="collect")
    worker = children.start("work", "--redis", redis_server.url, "--burst", "-q", "-c", "3", name="worker")
    wait_until(lambda: done_count(redis_server) >= 9, 30, "a fifth of the records")
    done_before = done_count(redis_server)
    redis_server.shutdown()
    assert worker.process.poll() is None  # the restart happens mid-run
    time.sleep(0.5)
    redis_server.start()
    assert done_count(redis_server) >= done_before  # the append-only file kept them

    assert worker.wait(60) == 0, worker.stderr
    assert collector.wait(30) == 0, collector.stderr
    assert_exactly_once(records_of(output.read_bytes()), count)
    assert_exactly_once(collected(redis_server), count)
    assert queue_status(redis_server)["done"] == count


@pytest.mark.slow
def test_worker_refused_writes_for_a_moment_does_not_hang(
    redis_server: RedisServer, server: TestServer, children: Children
) -> None:
    """A worker whose Redis refuses writes for a moment (OOM) finishes or exits, never hangs; the queue ends
    with exactly one record per request."""
    count = 40
    enqueue_ok(
        redis_server, "--chunk-size", "10", "-", input="".join(server.url(f"/sleep/200?i={i}\n") for i in range(count))
    )
    common = ["--redis", redis_server.url, "--burst", "-q", "-c", "4", "--claim-after", "1"]
    worker = children.start("work", *common, name="worker")
    wait_until(lambda: done_count(redis_server) >= 8, 30, "the first records")
    with redis_server.client() as admin:
        admin.config_set("maxmemory", "1")  # every write is refused: OOM command not allowed
        time.sleep(1.0)
        admin.config_set("maxmemory", "0")
    code = worker.wait(10)
    if code != 0:  # it gave up on the error: a worker started afterwards finishes the queue
        assert children.start("work", *common, name="second").wait(20) == 0
    assert_exactly_once(collected(redis_server), count)


@pytest.mark.anyio
async def test_follow_collects_a_record_landing_as_the_queue_completes(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """collect --follow writes the last record even when it lands between its last read and its completeness check."""
    keys = distributed.QueueKeys("race")
    client = distributed.connect(redis_server.url)
    try:

        async def two_requests() -> AsyncIterator[str]:
            yield "http://127.0.0.1:9/a"
            yield "http://127.0.0.1:9/b"

        assert await distributed.enqueue(client, keys, two_requests()) == 2
        record_once = client.register_script(RECORD_ONCE)

        async def record(index: int) -> None:
            line = json.dumps({"url": f"http://127.0.0.1:9/{index}", "index": index}, separators=(",", ":"))
            await record_once(keys=[keys.done, keys.results, keys.counts, keys.worker("t")], args=[index, line, "ok"])

        await record(0)
        complete = collector._complete

        async def last_record_lands_first(redis_client: Any, queue: distributed.QueueKeys) -> bool:
            await record(1)  # a worker's last record, just after the collector's read came back empty
            return await complete(redis_client, queue)

        monkeypatch.setattr(collector, "_complete", last_record_lands_first)
        lines: list[bytes] = []
        await asyncio.wait_for(
            distributed.collect(client, keys, lines.append, written=distributed.IndexBitmap(), follow=True, poll=0.05),
            10,
        )
        assert sorted(json.loads(line)["index"] for line in lines) == [0, 1]
    finally:
        await client.aclose()


# -- the worker's tasks: none dies alone -------------------------------------------------------------


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """The result of ``awaitable``, which must come within ``seconds`` (else :class:`TimeoutError`)."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise TimeoutError(f"no result within {seconds} s") from None


async def queue_of(client: Any, keys: distributed.QueueKeys, urls: Sequence[str], chunk_size: int) -> None:
    async def lines() -> AsyncIterator[str]:
        for url in urls:
            yield url

    assert await distributed.enqueue(client, keys, lines(), chunk_size=chunk_size) == len(urls)


@dataclass
class Failing:
    """A stand-in for a worker method that raises ``error`` (the first ``times`` calls, or always)."""

    error: BaseException
    times: int | None = None
    calls: int = 0
    recovered: asyncio.Event = field(default_factory=asyncio.Event)  # a call after the failures succeeded

    def patch(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        original = getattr(distributed.QueueWorker, name)

        async def stand_in(worker: distributed.QueueWorker, *args: Any) -> Any:
            self.calls += 1
            if self.times is None or self.calls <= self.times:
                raise self.error
            result = await original(worker, *args)
            self.recovered.set()
            return result

        monkeypatch.setattr(distributed.QueueWorker, name, stand_in)


@pytest.mark.anyio
@pytest.mark.parametrize("loop", ["_beat", "_write"])
async def test_a_worker_loop_that_dies_on_a_bug_ends_the_worker_with_that_error(
    redis_server: RedisServer, server: TestServer, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """A heartbeat or a sender failing on a non-Redis error stops the worker with that error, at once:
    no worker fetching on while others claim its chunks, no wait for a flush that never comes."""
    keys = distributed.QueueKeys("loop-bug")
    client = distributed.connect(redis_server.url)
    try:
        await queue_of(client, keys, [server.url(f"/sleep/300?i={i}") for i in range(6)], chunk_size=2)
        failing = Failing(RuntimeError(f"bug in {loop}"))
        failing.patch(monkeypatch, loop)
        worker = distributed.QueueWorker(
            client, keys, asyncfetch.FetchOptions(concurrency=2), claim_after=0.2, burst=True, poll=0.1
        )
        with pytest.raises(RuntimeError, match=f"bug in {loop}"):
            await within(worker.run(), 30)
        assert failing.calls
        # Nothing lost: what the worker did not finish stays pending, for another worker to take.
        state = await distributed.status(client, keys)
        assert state["done"] < 6
        assert state["chunks_in_flight"] + state["chunks_waiting"] > 0
        rescuer = distributed.QueueWorker(
            client, keys, asyncfetch.FetchOptions(), claim_after=0.2, burst=True, poll=0.1
        )
        monkeypatch.undo()
        await within(rescuer.run(), 30)
        assert (await distributed.status(client, keys))["done"] == 6
    finally:
        await client.aclose()


def test_work_exits_1_with_the_error_when_its_heartbeat_dies(
    redis_server: RedisServer, server: TestServer, tmp_path: Path
) -> None:
    """`asyncfetch work` whose heartbeat dies on a bug exits 1 with that error on stderr, before the
    queue is done: it neither hangs nor fetches on with nobody telling Redis it is alive."""
    urls = write_lines(tmp_path / "urls.txt", [server.url(f"/sleep/500?i={i}") for i in range(8)])
    enqueue_ok(redis_server, "--chunk-size", "2", str(urls))
    # The CLI in a child process with the heartbeat replaced by a bug (a monkeypatch cannot reach it).
    probe = (
        "import sys\n"
        "from asyncfetch.distributed.worker import QueueWorker\n"
        "async def broken_beat(self):\n"
        "    raise RuntimeError('bug in the heartbeat')\n"
        "QueueWorker._beat = broken_beat\n"
        "from asyncfetch.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["work", "--redis", redis_server.url, "--burst", "-q", "-c", "2", "--claim-after", "0.3"]
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert b"RuntimeError: bug in the heartbeat" in result.stderr
    assert done_count(redis_server) < 8  # it stopped at the failure, not after the whole queue


@pytest.mark.anyio
@pytest.mark.parametrize("loop", ["_beat", "_write"])
async def test_a_redis_error_in_a_worker_loop_is_retried(
    redis_server: RedisServer, server: TestServer, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """Redis refusing a heartbeat or a write a few times (OOM, a failover) is tried again: the worker
    finishes the queue, each record once."""
    keys = distributed.QueueKeys("loop-retry")
    client = distributed.connect(redis_server.url)
    try:
        await queue_of(client, keys, [server.url(f"/sleep/200?i={i}") for i in range(6)], chunk_size=2)
        failing = Failing(ResponseError("OOM command not allowed when used memory > 'maxmemory'."), times=3)
        failing.patch(monkeypatch, loop)
        stop = asyncio.Event()
        options = asyncfetch.FetchOptions(concurrency=2)
        worker = distributed.QueueWorker(client, keys, options, claim_after=0.2, poll=0.1)
        running = asyncio.ensure_future(worker.run(stop))

        async def done() -> None:
            await failing.recovered.wait()  # tried again after the failures, and it worked
            while (await distributed.status(client, keys))["done"] < 6:
                await asyncio.sleep(0.05)

        try:
            await within(asyncio.wait({running, asyncio.ensure_future(done())}, return_when="FIRST_COMPLETED"), 30)
            assert not running.done(), "the worker ended on an error it should have ridden out"
        finally:
            stop.set()
        totals = await within(running, 30)
        assert failing.calls > 3
        assert (totals.records, totals.chunks) == (6, 3)
        lines: list[bytes] = []
        await distributed.collect(client, keys, lines.append, written=distributed.IndexBitmap())
        assert_exactly_once([json.loads(line) for line in lines], 6)
    finally:
        await client.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("loop", ["_beat", "_write", "_next_chunk"])
async def test_a_redis_error_outlasting_the_patience_ends_the_worker_with_it(
    redis_server: RedisServer, server: TestServer, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """A Redis that keeps refusing for longer than the worker's patience ends the worker with that error
    (the CLI shows it in one line, exit 1) instead of a worker fetching or waiting forever."""
    keys = distributed.QueueKeys("loop-patience")
    client = distributed.connect(redis_server.url)
    try:
        await queue_of(client, keys, [server.url(f"/sleep/300?i={i}") for i in range(40)], chunk_size=2)
        Failing(ResponseError("READONLY You can't write against a read only replica.")).patch(monkeypatch, loop)
        worker = distributed.QueueWorker(
            client, keys, asyncfetch.FetchOptions(concurrency=2), claim_after=0.2, poll=0.1, patience=0.5
        )
        with pytest.raises(ResponseError, match="READONLY"):
            await within(worker.run(), 30)
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_status_after_a_redis_restart_still_counts_the_chunks_waiting(
    redis_servers: Callable[..., RedisServer],
) -> None:
    """After a restart (appendonly yes) Redis reports the group's lag as nil; status still says how many
    chunks wait, as it did before the restart — not 0."""
    redis_server = redis_servers(appendonly=True)
    keys = distributed.QueueKeys("restart")
    client = distributed.connect(redis_server.url)
    try:
        await queue_of(client, keys, [f"http://127.0.0.1:9/{i}" for i in range(10)], chunk_size=2)
        # A worker takes three chunks and finishes the first: 2 in flight, 2 waiting, 1 deleted.
        answer: Any = await client.xreadgroup(distributed.GROUP, "w1", {keys.jobs: ">"}, count=3)
        (first_id, first_fields), *_ = answer[0][1]
        record_once = client.register_script(RECORD_ONCE)
        for index in (0, 1):
            line = json.dumps({"url": f"http://127.0.0.1:9/{index}", "index": index})
            await record_once(keys=[keys.done, keys.results, keys.counts, keys.worker("w1")], args=[index, line, "ok"])
        ack = client.register_script(ACK_IF_COMPLETE)
        assert await ack(
            keys=[keys.done, keys.jobs], args=[distributed.GROUP, first_id, int(first_fields[b"first"]), 2]
        )
        before = await distributed.status(client, keys)
        assert (before["chunks_waiting"], before["chunks_in_flight"], before["in_progress_or_waiting"]) == (2, 2, 8)

        redis_server.shutdown()
        redis_server.start()
        groups: Any = await client.xinfo_groups(keys.jobs)
        assert groups[0]["lag"] is None, "this Redis keeps the lag across a restart: the scene is not set"
        after = await distributed.status(client, keys)
        assert {
            key: after[key] for key in ("chunks_waiting", "chunks_in_flight", "in_progress_or_waiting", "done")
        } == {
            "chunks_waiting": 2,
            "chunks_in_flight": 2,
            "in_progress_or_waiting": 8,
            "done": 2,
        }
    finally:
        await client.aclose()


# -- credentials ------------------------------------------------------------------------------------


def new_password() -> str:
    return "pw-" + secrets.token_hex(12)


def assert_never_shown(secret: str, *results: subprocess.CompletedProcess[bytes]) -> None:
    for result in results:
        assert secret.encode() not in result.stdout, result.stdout[-500:]
        assert secret.encode() not in result.stderr, result.stderr[-500:]


def all_at_once(*calls: Callable[[], subprocess.CompletedProcess[bytes]]) -> list[subprocess.CompletedProcess[bytes]]:
    """Run independent CLI calls side by side (each one is a subprocess with its own timeout)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_password_in_the_url_works_and_is_never_shown(
    redis_servers: Callable[..., RedisServer], server: TestServer, tmp_path: Path
) -> None:
    """A redis:// URL with a password works for every command, and the password shows in no output or record."""
    password = new_password()
    redis_server = redis_servers(password=password)
    source = write_lines(tmp_path / "urls.txt", [server.url(f"/ok?i={i}") for i in range(5)])
    user_url = redis_server.url.replace("://:", "://default:")
    from_env = {"ASYNCFETCH_REDIS": redis_server.url}
    queued = all_at_once(
        lambda: queue_cli(redis_server, "enqueue", str(source)),
        lambda: run_cli("enqueue", "--redis", user_url, str(source)),
        lambda: run_cli("enqueue", str(source), env=from_env),
    )
    worked = [
        work_until_done(redis_server, 15, "--summary"),
        *all_at_once(
            lambda: queue_cli(redis_server, "collect", "--summary"),
            lambda: run_cli("collect", "--summary", env={"ASYNCFETCH_REDIS": user_url}),
            lambda: run_cli("status", env=from_env),
        ),
    ]
    for result in queued + worked[1:]:
        assert result.returncode == 0, result.stderr
    assert b"15 records" in worked[0].stderr  # the worker's summary, after SIGTERM
    assert b"at redis://127.0.0.1:" in queued[0].stderr  # the enqueue message names the Redis, not its credentials
    assert_exactly_once(records_of(worked[1].stdout), 15)
    assert_exactly_once(records_of(worked[2].stdout), 15)
    helps = all_at_once(
        *(
            (lambda command=command: run_cli(command, "--help", env=from_env))
            for command in ("enqueue", "work", "collect", "status")
        )
    )
    assert_never_shown(password, *queued, *worked, *helps)


def test_wrong_password_fails_at_once_without_showing_either_password(
    redis_servers: Callable[..., RedisServer], server: TestServer, tmp_path: Path
) -> None:
    """A wrong (or missing) password makes every command fail at once with one short line that shows no password."""
    password, wrong = new_password(), new_password()
    redis_server = redis_servers(password=password)
    bad_url = redis_server.url.replace(password, wrong)
    source = write_lines(tmp_path / "urls.txt", [server.url("/ok")])
    started = time.monotonic()
    results = all_at_once(
        lambda: run_cli("enqueue", "--redis", bad_url, str(source), timeout=30),
        lambda: run_cli("work", "--redis", bad_url, "--burst", "-q", timeout=30),
        lambda: run_cli("collect", "--redis", bad_url, "--follow", timeout=30),
        lambda: run_cli("status", "--redis", bad_url, timeout=30),
        lambda: run_cli("status", "--redis", redis_server.url.replace(f":{password}@", ""), timeout=30),
    )
    assert time.monotonic() - started < 20  # no minute of retries for a password that will not work
    for result in results:
        assert result.returncode == 1, result.stderr
        assert result.stdout == b""
        lines = result.stderr.decode().strip().splitlines()
        assert b"Traceback" not in result.stderr, lines[-1:]
        assert 1 <= len(lines) <= 3, lines
    assert_never_shown(password, *results)
    assert_never_shown(wrong, *results)
    with redis_server.client() as probe:
        assert probe.get(QUEUE.next) is None  # nothing was queued


def test_unreachable_redis_fails_at_once_without_showing_the_password(tmp_path: Path) -> None:
    """Against a Redis nobody listens on, every command fails quickly with one short line that shows no password."""
    password = new_password()
    url = f"redis://:{password}@127.0.0.1:{unused_port()}/0"
    source = write_lines(tmp_path / "urls.txt", ["http://127.0.0.1:9/ok"])
    started = time.monotonic()
    results = all_at_once(
        lambda: run_cli("enqueue", "--redis", url, str(source), timeout=60),
        lambda: run_cli("work", "--redis", url, "--burst", "--summary", timeout=60),
        lambda: run_cli("collect", "--redis", url, "--follow", timeout=60),
        lambda: run_cli("status", "--redis", url, timeout=60),
    )
    assert time.monotonic() - started < 30
    for result in results:
        assert result.returncode == 1, result.stderr
        assert result.stdout == b""
        lines = result.stderr.decode().strip().splitlines()
        assert b"Traceback" not in result.stderr, lines[-1:]
        assert 1 <= len(lines) <= 3, lines
        assert "127.0.0.1" in lines[-1]  # it says which Redis it could not reach
    assert_never_shown(password, *results)


@pytest.mark.parametrize("form", ["at-sign", "query"])
def test_password_in_any_url_form_is_never_shown(
    redis_servers: Callable[..., RedisServer], server: TestServer, form: str
) -> None:
    """However the URL carries the password (an unescaped '@' in it, or ?password=), no output shows it."""
    secret, wrong = secrets.token_hex(10), secrets.token_hex(10)
    password = f"pw@{secret}" if form == "at-sign" else secret
    redis_server = redis_servers(password=password)
    if form == "at-sign":
        url = redis_server.url
    else:
        url = f"redis://127.0.0.1:{redis_server.port}/0?password={password}"
    wrong_url = url.replace(secret, wrong)
    results = all_at_once(
        lambda: run_cli("enqueue", "--redis", url, "-", input=server.url("/ok\n")),
        lambda: run_cli("status", "--redis", url),
        lambda: run_cli("status", "--redis", wrong_url),
    )
    assert [result.returncode for result in results] == [0, 0, 1]
    assert_never_shown(secret, *results)
    assert_never_shown(wrong, *results)


def test_header_given_at_enqueue_never_lands_in_a_record(
    redis_server: RedisServer, server: TestServer, tmp_path: Path
) -> None:
    """A credential passed with -H at enqueue reaches the server but is written into no record, valid or not."""
    token = "tok-" + secrets.token_hex(12)
    source = write_lines(
        tmp_path / "urls.txt",
        [server.url("/ok"), json.dumps({"url": server.url("/ok?j")}), json.dumps({"url": 5}), '{"url": "x", "n": 1}'],
    )
    enqueue_ok(redis_server, "-H", f"Authorization: Bearer {token}", str(source))
    work = work_until_done(redis_server, 4, "-q", "--summary")
    result = queue_cli(redis_server, "collect")
    assert len(records_of(result.stdout)) == 4
    assert_never_shown(token, work, result)


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    authority.cert_pem.write_to_path(str(files.ca))
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    return files


def test_rediss_url_with_password_works_and_is_never_shown(
    redis_servers: Callable[..., RedisServer], server: TestServer, tmp_path: Path
) -> None:
    """A rediss:// (TLS) URL with a password works end to end, and the password shows in no output."""
    tls = make_tls_files(tmp_path / "tls")
    password = new_password()
    try:
        redis_server = redis_servers(password=password, tls=tls)
    except RuntimeError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server was built without TLS support: {exc}")
        raise
    trust = {"SSL_CERT_FILE": str(tls.ca)}  # the test CA, for the client's default verification
    source = write_lines(tmp_path / "urls.txt", [server.url(f"/ok?i={i}") for i in range(4)])
    results = [
        queue_cli(redis_server, "enqueue", str(source), env=trust),
        work_until_done(redis_server, 4, "--summary", env=trust),
        *all_at_once(
            lambda: queue_cli(redis_server, "collect", "--summary", env=trust),
            lambda: queue_cli(redis_server, "status", env=trust),
            # Without the CA the server's certificate is refused: an error, still without the password.
            lambda: queue_cli(redis_server, "status"),
        ),
    ]
    assert [result.returncode for result in results] == [0, 130, 0, 0, 1], [r.stderr for r in results]
    assert_exactly_once(records_of(results[2].stdout), 4)
    assert b"certificate" in results[4].stderr.lower()
    assert_never_shown(password, *results)
    with redis_server.client() as probe:
        assert probe.get(QUEUE.next) == b"4"  # it really went through the TLS server
