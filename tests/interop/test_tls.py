"""TLS against real servers: a certificate for another host, or from an unknown CA, is error kind tls."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from asyncfetch.errors import ErrorKind
from tests.conftest import collect, records_of, run_cli
from tests.interop.conftest import WebServer, curl_env

pytestmark = pytest.mark.anyio


@pytest.mark.usefixtures("trust_ca")
async def test_a_certificate_for_another_host_is_a_tls_error(nginx_wrong_host: WebServer) -> None:
    """nginx presents a valid certificate (trusted CA) for another name: tls, not retried, no status."""
    [record] = await collect([nginx_wrong_host.url("/1k.bin")])
    assert record.error is not None
    assert record.error.kind == ErrorKind.TLS
    assert record.status is None
    assert record.attempts == 1


async def test_a_certificate_from_an_unknown_ca_is_a_tls_error(
    nginx_tls: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the suite's CA in the trust store the server's certificate is unknown: tls."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    [record] = await collect([nginx_tls.url("/1k.bin")])
    assert record.error is not None
    assert record.error.kind == ErrorKind.TLS


async def test_insecure_accepts_the_wrong_host(nginx_wrong_host: WebServer) -> None:
    """insecure=True (-k) fetches from the same server: the file as on disk."""
    file = nginx_wrong_host.tree["/1k.bin"]
    [record] = await collect([nginx_wrong_host.url(file.path)], insecure=True)
    assert (record.status, record.sha256, record.error) == (200, file.sha256, None)


def test_curl_and_the_cli_agree_the_wrong_host_is_refused(
    nginx_wrong_host: WebServer, cli_tls_env: dict[str, str], curl: str, ca_file: Path
) -> None:
    """curl refuses the certificate too (its TLS exit status); the CLI writes a tls record and exits 1."""
    url = nginx_wrong_host.url("/1k.bin")
    by_curl = subprocess.run(
        [curl, "-sS", "--cacert", str(ca_file), "-o", "/dev/null", url],
        capture_output=True,
        env=curl_env(),
        timeout=60,
        check=False,
    )
    assert by_curl.returncode in (35, 51, 60)  # TLS handshake / peer certificate / CA problems
    done = run_cli("-q", input=url + "\n", env=cli_tls_env)
    assert done.returncode == 1
    [record] = records_of(done.stdout)
    assert record["error"]["kind"] == "tls"
    assert b"Traceback" not in done.stderr
