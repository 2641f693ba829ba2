"""Redirects: hops recorded in order, methods rewritten as browsers and curl do, limits enforced."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from asyncfetch.errors import ErrorKind
from asyncfetch.record import Redirect
from tests.conftest import collect
from tests.server import TestServer

pytestmark = pytest.mark.anyio


def _redirect_to(server: TestServer, target: str, status: int) -> str:
    return server.url(f"/redirect-to?url={quote(target, safe='')}&status={status}")


def _echo_of(body: str | None) -> dict[str, Any]:
    assert body is not None
    echoed: dict[str, Any] = json.loads(body)
    return echoed


async def test_hops_are_recorded_in_order_with_status_and_url(server: TestServer) -> None:
    """Each hop followed is recorded in order (the URL that redirected, its status); final_url is the last."""
    [record] = await collect([server.url("/redirect/3")])
    assert record.status == 200
    assert record.ok
    assert record.redirects == (
        Redirect(302, server.url("/redirect/3")),
        Redirect(302, server.url("/redirect/2")),
        Redirect(302, server.url("/redirect/1")),
    )
    assert record.final_url == server.url("/redirect/0")
    assert record.url == server.url("/redirect/3")
    fields = json.loads(record.to_json())
    assert fields["redirects"][0] == {"status": 302, "url": server.url("/redirect/3")}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_every_redirect_status_is_followed(server: TestServer, status: int) -> None:
    """301, 302, 303, 307 and 308 are all followed and recorded with their own status."""
    [record] = await collect([server.url(f"/redirect/2?status={status}")])
    assert record.status == 200
    assert [hop.status for hop in record.redirects] == [status, status]


async def test_no_follow_returns_the_redirect_itself(server: TestServer) -> None:
    """With follow=False the 3xx is the final response: no hops, final_url is the URL asked for."""
    [record] = await collect([server.url("/redirect/3")], follow=False)
    assert record.status == 302
    assert record.redirects == ()
    assert record.final_url == server.url("/redirect/3")
    assert record.error is None
    assert record.ok  # 302 < 400


async def test_a_3xx_without_location_is_the_final_response(server: TestServer) -> None:
    """A redirect status with no Location header cannot be followed and is simply the answer."""
    [record] = await collect([server.url("/status/302")])
    assert record.status == 302
    assert record.redirects == ()
    assert record.error is None


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_a_post_redirected_by_301_302_or_303_becomes_a_get_without_body(server: TestServer, status: int) -> None:
    """After a 303 (and, as browsers and curl do, a 301 or 302) a POST is followed with a GET without body."""
    item = {"url": _redirect_to(server, server.url("/echo"), status), "body": "payload"}
    [record] = await collect([item], include_body=True)
    assert record.status == 200
    echoed = _echo_of(record.body)
    assert echoed["method"] == "GET"
    assert echoed["body"] == ""
    assert "content-length" not in echoed["headers"] or echoed["headers"]["content-length"] == "0"


async def test_a_303_after_a_put_is_a_get_but_head_stays_head(server: TestServer) -> None:
    """A 303 makes any method a GET, except HEAD, which stays HEAD."""
    put = {"url": _redirect_to(server, server.url("/echo"), 303), "method": "PUT", "body": "x"}
    [record] = await collect([put], include_body=True)
    assert _echo_of(record.body)["method"] == "GET"
    head = {"url": _redirect_to(server, server.url("/resource/10"), 303), "method": "HEAD"}
    [headed] = await collect([head])
    assert headed.status == 200
    assert headed.size == 0
    assert headed.final_url == server.url("/resource/10")


@pytest.mark.parametrize("status", [307, 308])
async def test_307_and_308_keep_the_method_and_body(server: TestServer, status: int) -> None:
    """307 and 308 repeat the request as it was: same method, same body."""
    item = {"url": _redirect_to(server, server.url("/echo"), status), "method": "PUT", "body": "payload"}
    [record] = await collect([item], include_body=True)
    echoed = _echo_of(record.body)
    assert echoed["method"] == "PUT"
    assert echoed["body"] == "payload"


async def test_max_redirects_allows_exactly_that_many_hops(server: TestServer) -> None:
    """max_redirects N follows N hops; one more is too_many_redirects with the status kept."""
    [exact] = await collect([server.url("/redirect/3")], max_redirects=3)
    assert exact.status == 200
    assert len(exact.redirects) == 3
    [over] = await collect([server.url("/redirect/4")], max_redirects=3)
    assert over.error is not None
    assert over.error.kind is ErrorKind.TOO_MANY_REDIRECTS
    assert over.status == 302
    assert over.sha256 is None


async def test_max_redirects_zero_refuses_any_redirect(server: TestServer) -> None:
    """With max_redirects 0 the first redirect is already too many."""
    [record] = await collect([server.url("/redirect/1")], max_redirects=0)
    assert record.error is not None
    assert record.error.kind is ErrorKind.TOO_MANY_REDIRECTS
    assert record.redirects == ()


async def test_credentials_are_not_sent_to_another_host(server: TestServer, fresh_server: TestServer) -> None:
    """Authorization is kept on a same-origin redirect and dropped when the redirect leads elsewhere."""
    auth = (("Authorization", "Bearer secret"),)
    [same] = await collect([_redirect_to(server, server.url("/echo"), 302)], include_body=True, headers=auth)
    assert _echo_of(same.body)["headers"].get("authorization") == "Bearer secret"
    [other] = await collect([_redirect_to(server, fresh_server.url("/echo"), 302)], include_body=True, headers=auth)
    assert other.final_url == fresh_server.url("/echo")
    assert "authorization" not in _echo_of(other.body)["headers"]


async def test_a_redirect_to_an_unfetchable_url_is_invalid_url(server: TestServer) -> None:
    """A Location that is not http(s) ends the request with invalid_url, the hop's status kept."""
    [record] = await collect([_redirect_to(server, "ftp://example.com/file", 302)])
    assert record.error is not None
    assert record.error.kind is ErrorKind.INVALID_URL
    assert record.status == 302


async def test_redirects_reuse_the_connection(fresh_server: TestServer) -> None:
    """Hops to the same host go over the same kept-alive connection."""
    [record] = await collect([fresh_server.url("/redirect/5")], concurrency=1)
    assert record.status == 200
    assert fresh_server.stats.connections == 1
