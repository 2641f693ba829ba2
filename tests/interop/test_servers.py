"""The fixtures' own rules: missing servers skip (fail under CI), stopped servers leave no process behind."""

from __future__ import annotations

import os
import socket
import sys
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
