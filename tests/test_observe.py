"""What a record says about the wire: timings, the remote address, TLS facts, and --fields."""

from __future__ import annotations

import datetime
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from asyncfetch.options import FetchOptions
from asyncfetch.record import RECORD_FIELDS, Record, Redirect, Timings
from tests.conftest import collect, unused_port
from tests.server import TestServer

pytestmark = pytest.mark.anyio


def _json(record: Record) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(record.to_json())
    return value


# -- timings ----------------------------------------------------------------------------------------
async def test_timings_are_absent_unless_asked_for(server: TestServer) -> None:
    """The default record has no timings key."""
    [record] = await collect([server.url("/ok")])
    assert "timings" not in _json(record)


async def test_ttfb_covers_a_server_that_delays_its_first_byte(fresh_server: TestServer) -> None:
    """A server that answers after 300 ms gives a ttfb of at least that, and total at least ttfb."""
    [record] = await collect([fresh_server.url("/sleep/300")], timings=True)
    timings = _json(record)["timings"]
    assert set(timings) == {"dns", "connect", "tls", "ttfb", "total"}
    # ``sent`` is stamped once the write returns; the server, a thread of this process, may have
    # read the request and begun its 300 ms before this thread gets the GIL back (5 ms slices).
    assert timings["ttfb"] >= 300 - 10
    assert timings["total"] >= timings["ttfb"]
    assert timings["total"] == record.elapsed_ms


async def test_a_new_plain_connection_to_an_address_has_connect_but_no_dns_or_tls(fresh_server: TestServer) -> None:
    """An IP address needs no lookup and plain HTTP no handshake: those phases are null."""
    [record] = await collect([fresh_server.url("/ok")], timings=True)
    timings = _json(record)["timings"]
    assert timings["dns"] is None
    assert timings["tls"] is None
    assert isinstance(timings["connect"], float)
    assert timings["connect"] >= 0
    assert isinstance(timings["ttfb"], float)


async def test_a_host_name_is_looked_up_and_the_lookup_timed(fresh_server: TestServer) -> None:
    """A URL with a host name has a dns phase."""
    [record] = await collect([f"http://localhost:{fresh_server.port}/ok"], timings=True)
    assert record.error is None
    timings = _json(record)["timings"]
    assert isinstance(timings["dns"], float)
    assert isinstance(timings["connect"], float)


async def test_a_reused_connection_has_no_dns_connect_or_tls(fresh_server: TestServer) -> None:
    """The second request on a kept-alive connection spent nothing on connecting."""
    first, second = await collect([fresh_server.url("/ok"), fresh_server.url("/ok")], timings=True, concurrency=1)
    assert _json(first)["timings"]["connect"] is not None
    timings = _json(second)["timings"]
    assert (timings["dns"], timings["connect"], timings["tls"]) == (None, None, None)
    assert timings["ttfb"] is not None


async def test_a_failed_connection_has_timings_with_null_phases() -> None:
    """A refused connection still has a timings object: no ttfb, total set."""
    [record] = await collect([f"http://127.0.0.1:{unused_port()}/"], timings=True, retries=0)
    timings = _json(record)["timings"]
    assert timings["connect"] is None
    assert timings["ttfb"] is None
    assert timings["total"] == record.elapsed_ms


async def test_timings_of_a_redirect_chain_are_those_of_the_final_response(fresh_server: TestServer) -> None:
    """After a redirect on the same connection the final hop reused it: no connect phase."""
    [record] = await collect([fresh_server.url("/redirect/1")], timings=True)
    assert record.status == 200
    assert len(record.redirects) == 1
    assert _json(record)["timings"]["connect"] is None


async def test_an_invalid_line_has_a_timings_object_too() -> None:
    """Every record has timings when asked, even one never sent."""
    [record] = await collect(["ftp://example.com/"], timings=True)
    assert _json(record)["timings"] == {"dns": None, "connect": None, "tls": None, "ttfb": None, "total": None}


# -- remote address -----------------------------------------------------------------------------------
async def test_remote_ip_and_port_name_the_server_that_answered(fresh_server: TestServer) -> None:
    """remote_ip and remote_port are always present, and name the peer of the final response."""
    [record] = await collect([f"http://localhost:{fresh_server.port}/ok"])
    fields = _json(record)
    assert fields["remote_ip"] == "127.0.0.1"
    assert fields["remote_port"] == fields["remote_port"] == fresh_server.port
    keys = list(fields)
    assert keys.index("remote_ip") == keys.index("http_version") + 1


async def test_remote_ip_is_null_when_no_connection_was_made() -> None:
    """A refused connection and a line never sent both have remote_ip null."""
    records = await collect([f"http://127.0.0.1:{unused_port()}/", "ftp://example.com/"], retries=0)
    for record in records:
        fields = _json(record)
        assert (fields["remote_ip"], fields["remote_port"]) == (None, None)


# -- TLS --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def expiring_tls_server(certificate_authority: trustme.CA) -> Iterator[TestServer]:
    """An HTTPS server whose certificate expires in ten days and some hours."""
    now = datetime.datetime.now(datetime.UTC)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert(
        "127.0.0.1",
        "localhost",
        common_name="expiring.test",
        not_before=now - datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=10, hours=12),
    ).configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    running = TestServer(ssl_context=context).start()
    yield running
    running.stop()


async def test_tls_facts_of_a_verified_connection(
    tls_server: TestServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--tls gives protocol, cipher, ALPN and the leaf certificate of an HTTPS response."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    [record] = await collect([tls_server.url("/ok")], tls=True)
    assert record.error is None
    tls = _json(record)["tls"]
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert isinstance(tls["cipher"], str)
    assert tls["alpn"] is None  # this server offers no ALPN
    assert set(tls["sans"]) == {"127.0.0.1", "localhost"}
    assert "trustme" in tls["issuer"]
    assert tls["subject"] != tls["issuer"]
    not_before = datetime.datetime.fromisoformat(tls["not_before"])
    not_after = datetime.datetime.fromisoformat(tls["not_after"])
    assert not_before < datetime.datetime.now(datetime.UTC) < not_after
    assert tls["not_after"].endswith("Z")
    assert tls["expires_in_days"] > 30


async def test_tls_facts_with_verification_off_still_read_the_certificate(expiring_tls_server: TestServer) -> None:
    """With -k the certificate is not verified but is still described, days to expiry included."""
    [record] = await collect([expiring_tls_server.url("/ok")], tls=True, insecure=True)
    assert record.error is None
    tls = _json(record)["tls"]
    assert tls["subject"].startswith("CN=expiring.test,")
    assert tls["alpn"] == "http/1.1"
    assert "127.0.0.1" in tls["sans"]
    assert tls["expires_in_days"] == 10


async def test_tls_with_timings_times_the_handshake(expiring_tls_server: TestServer) -> None:
    """A new HTTPS connection has a tls phase beside its connect phase."""
    [record] = await collect([expiring_tls_server.url("/ok")], tls=True, timings=True, insecure=True)
    assert record.error is None
    fields = _json(record)
    assert isinstance(fields["timings"]["tls"], float)
    assert isinstance(fields["timings"]["connect"], float)
    assert fields["tls"]["alpn"] == "http/1.1"


async def test_an_untrusted_certificate_is_still_a_tls_error_with_timings(
    tls_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two-step connection of --timings classifies a rejected certificate as tls, as the default does."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    [record] = await collect([tls_server.url("/ok")], timings=True, retries=0)
    assert record.error is not None
    assert record.error.kind.value == "tls"
    assert _json(record)["timings"]["tls"] is None


async def test_tls_is_null_for_plain_http(server: TestServer) -> None:
    """--tls on a plain HTTP response gives tls null; without --tls there is no key."""
    [record] = await collect([server.url("/ok")], tls=True)
    assert _json(record)["tls"] is None
    [plain] = await collect([server.url("/ok")])
    assert "tls" not in _json(plain)


# -- fields -------------------------------------------------------------------------------------------
async def test_fields_keep_only_the_named_keys_in_record_order(server: TestServer) -> None:
    """--fields sha256,url,status gives records with exactly those keys, in the record's own order."""
    [record] = await collect([server.url("/ok")], fields=("sha256", "url", "status"))
    fields = _json(record)
    assert list(fields) == ["url", "status", "sha256"]
    assert fields["status"] == 200


async def test_fields_apply_to_invalid_lines_too() -> None:
    """A record never sent is cut to the same fields."""
    [record] = await collect(["ftp://example.com/"], fields=("url", "error"))
    assert list(_json(record)) == ["url", "error"]


def test_an_unknown_field_is_a_value_error_naming_the_valid_ones() -> None:
    """An unknown field name is refused before anything is fetched, with the list to choose from."""
    with pytest.raises(ValueError, match="unknown record field 'colour'") as caught:
        FetchOptions(fields=("url", "colour"))
    assert "sha256" in str(caught.value)


@pytest.mark.parametrize(("name", "option"), [("headers", "--headers"), ("timings", "--timings"), ("tls", "--tls")])
def test_a_field_filled_only_by_an_option_needs_that_option(name: str, option: str) -> None:
    """Asking for a field no record would have is a usage error, not a silently missing key."""
    with pytest.raises(ValueError, match=option):
        FetchOptions(fields=("url", name))


def test_no_fields_at_all_is_refused() -> None:
    """An empty field list would give empty objects: refused."""
    with pytest.raises(ValueError, match="at least one"):
        FetchOptions(fields=())


def test_record_fields_lists_every_key_a_record_can_have_in_order() -> None:
    """RECORD_FIELDS (what --fields accepts) is every key of the fullest record, in the same order."""
    record = Record(
        url="u",
        index=0,
        method="GET",
        id=1,
        input={"a": "b"},
        redirects=(Redirect(301, "x"),),
        headers={},
        body="x",
        body_encoding="base64",
        saved_to="f",
        content_encoding="compress",
        timings=Timings(),
        tls=None,
        changed=True,
        etag='"e"',
        last_modified="Tue, 01 Dec 2026 00:00:00 GMT",
    )
    assert tuple(_json(record)) == RECORD_FIELDS


def test_fields_may_be_given_as_comma_separated_text() -> None:
    """fields="url, status" is the tuple ("url", "status"), as --fields writes it."""
    assert FetchOptions(fields="url, status").fields == ("url", "status")  # type: ignore[arg-type]


# -- the summary, from the library ----------------------------------------------------------------
async def test_the_library_builds_the_json_summary_from_its_records(server: TestServer) -> None:
    """As the README shows: RunStats with a HostTable, given each record and the run's connection counts,
    is --summary-json's object."""
    from asyncfetch import fetch
    from asyncfetch.stats import HostTable, RunStats

    stats = RunStats(hosts=HostTable())
    async with fetch([server.url("/ok"), server.url("/status/500")], concurrency=1, retries=0) as run:
        async for record in run:
            stats.add(record)
    stats.connections_opened, stats.connections_reused = run.connections_opened, run.connections_reused
    summary = stats.to_dict()
    assert (summary["requests"], summary["ok"], summary["http_errors"], summary["errors"]) == (2, 1, 1, 0)
    assert summary["connections"]["opened"] + summary["connections"]["reused"] == 2
    assert summary["hosts"]["by_host"][server.url("/").split("://")[1].rstrip("/")]["requests"] == 2
