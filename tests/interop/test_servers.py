"""The fixtures' own rules: missing servers skip (fail under CI), stopped servers leave no process behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.interop import configs, servers
from tests.interop.servers import (
    ServerFailed,
    StaticTree,
    find_binary,
    free_port,
    start_on_free_port,
)


def _group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid:
                    members.append(int(name))
            except OSError:
                continue
    return members


def test_a_missing_server_skips_the_test_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CI=true a server that is not installed skips, naming the program."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-server-here is not installed"):
        find_binary("no-such-server-here")


def test_a_missing_server_fails_the_test_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CI=true the same missing server is a failure, so CI cannot go green by skipping."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI=true a missing server is a failure"):
        find_binary("no-such-server-here")


def test_stopping_a_server_ends_its_workers_too(
    interop_dir: Path, static_tree: StaticTree, request: pytest.FixtureRequest
) -> None:
    """apache2 forks workers: after stop() no process of its group is left, and its port is free again."""
    binary = find_binary("apache2")
    workdir = interop_dir / f"apache2-stop-{request.node.name}"

    def configure(port: int) -> list[str]:
        return [binary, "-f", str(configs.apache_conf(workdir, port, static_tree)), "-DFOREGROUND"]

    server = start_on_free_port("apache2", workdir, configure)
    assert server.process is not None
    pgid = server.process.pid
    try:
        assert len(_group_members(pgid)) >= 2  # the master and at least one child
    finally:
        server.stop()
    assert _group_members(pgid) == []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", server.port))  # nothing holds it any more


def test_a_server_that_cannot_start_raises_with_its_log(interop_dir: Path) -> None:
    """A server that exits at once (here: a bad option) raises at once with its own words, not after a deadline."""
    with pytest.raises(ServerFailed, match="exited"):
        start_on_free_port(
            "broken",
            interop_dir / "broken",
            lambda port: [sys.executable, "-c", f"import sys; sys.exit('cannot use port {port}: bad option')"],
        )


@pytest.mark.parametrize("squatted_server", ["exits", "waits"])
def test_a_port_taken_by_another_program_is_left_for_a_fresh_one(
    interop_dir: Path, monkeypatch: pytest.MonkeyPatch, squatted_server: str
) -> None:
    """A port taken between the probe and the server's bind: the server is started again on another port,
    whether it exits ("address in use") or runs on without listening while the other program listens."""
    squatter = socket.create_server(("127.0.0.1", 0))
    taken = squatter.getsockname()[1]
    probes = iter([taken])
    monkeypatch.setattr(servers, "free_port", lambda: next(probes, None) or free_port())
    listen = "import socket, sys, time; s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(60)"
    idle = "import time; time.sleep(60)"

    def configure(port: int) -> list[str]:
        if port == taken:
            return [sys.executable, "-c", listen if squatted_server == "exits" else idle, str(port)]
        return [sys.executable, "-c", listen, str(port)]

    try:
        server = start_on_free_port("listener", interop_dir / f"listener-{squatted_server}", configure)
        try:
            assert server.port != taken
            assert server.running
        finally:
            server.stop()
    finally:
        squatter.close()


def test_servers_are_stopped_even_when_the_test_process_is_killed(tmp_path: Path) -> None:
    """A pytest killed with SIGKILL runs no teardown: each server's watchdog stops its process group then."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.interop.servers import start_on_free_port\n"
        'listen = \'import socket, sys, time; s = socket.create_server(("127.0.0.1", int(sys.argv[1])));'
        " time.sleep(600)'\n"
        f"server = start_on_free_port('orphan', Path({str(tmp_path)!r}) / 'orphan', "
        "lambda port: [sys.executable, '-c', listen, str(port)])\n"
        "print(server.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2], text=True
    )
    try:
        assert owner.stdout is not None
        group = int(owner.stdout.readline())
        assert _group_members(group)
    finally:
        owner.kill()
        owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()
    deadline = time.monotonic() + 20
    while _group_members(group):
        if time.monotonic() > deadline:
            raise AssertionError(f"the orphaned server's group {group} still runs 20 s after its owner was killed")
        time.sleep(0.1)
