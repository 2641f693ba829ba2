"""Shared fixtures: real local servers (plain and TLS), a record collector, the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import asyncfetch
from asyncfetch.transport import Resolver
from tests.server import TestServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def server() -> Iterator[TestServer]:
    """A server shared by tests that only read answers (do not read its stats: other tests write them)."""
    running = TestServer().start()
    yield running
    running.stop()


@pytest.fixture
def fresh_server() -> Iterator[TestServer]:
    """A server of this test's own, whose stats count only this test's requests."""
    running = TestServer().start()
    yield running
    running.stop()


@pytest.fixture
def other_fresh_server() -> Iterator[TestServer]:
    """A second server of this test's own: another host beside ``fresh_server`` (a host is scheme, host, port).

    A fixture, not ``TestServer()`` in the test: stopping a server runs its loop, which an async test cannot.
    """
    running = TestServer().start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(certificate_authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def tls_server(certificate_authority: trustme.CA) -> Iterator[TestServer]:
    """An HTTPS server whose certificate (for 127.0.0.1) is signed by ``certificate_authority``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    running = TestServer(ssl_context=context).start()
    yield running
    running.stop()


class TableResolver(Resolver):
    """Resolves names from a table (no DNS): lets a test choose each name's addresses and their order."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        super().__init__()
        self._table = table

    async def resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        if host not in self._table:
            return await super().resolve(host, port)
        return [(socket.AF_INET, address) for address in self._table[host]]


async def collect(requests: Iterable[Any] | AsyncIterable[Any], **options: Any) -> list[asyncfetch.Record]:
    """Every record of a fetch, in completion order."""
    return [record async for record in asyncfetch.fetch(requests, **options)]


def run_cli(
    *args: str,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m asyncfetch ARGS`` as a subprocess; stdin is ``input`` (or empty), output captured."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCFETCH_")}
    full_env.update(env or {})
    data = input.encode() if isinstance(input, str) else input
    return subprocess.run(
        [sys.executable, "-m", "asyncfetch", *args],
        input=data if data is not None else b"",
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def records_of(stdout: bytes) -> list[dict[str, Any]]:
    """The JSON records of a CLI run's stdout; fails the test on any line that is not JSON."""
    return [json.loads(line) for line in stdout.decode("utf-8").splitlines()]


def unused_port() -> int:
    """A local TCP port with nothing listening on it (bound, then closed): connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
