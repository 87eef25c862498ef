"""Routing through the proxy to several real upstreams; forwarded headers; local answers; error pages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.support.proxy_harness import (
    https_get,
    one_app_proxy,
    parse_responses,
    raw_exchange,
    running_proxy,
)
from tests.support.proxy_routes import StaticGate, StaticUpstream, snapshot
from tests.support.upstreams import HttpUpstream

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]


async def test_routes_across_apps_and_path_split(tmp_path: Path) -> None:
    ups = {name: await HttpUpstream(name).start() for name in ("web", "api", "blog", "wild")}
    gates = {name: StaticGate(name, [StaticUpstream(u.port)]) for name, u in ups.items()}
    routes = {
        "shop.tako.test": gates["web"],
        "shop.tako.test/api/*": gates["api"],
        "blog.tako.test": gates["blog"],
        "*.wild.tako.test": gates["wild"],
    }
    try:
        async with running_proxy(tmp_path, routes) as p:
            for name in ("shop.tako.test", "blog.tako.test", "x.wild.tako.test"):
                p.issue(name)
            async with p.https() as client:
                cases = [
                    ("shop.tako.test", "/", "web"),
                    ("shop.tako.test", "/apix", "web"),
                    ("shop.tako.test", "/api", "api"),
                    ("shop.tako.test", "/api/v1/items?q=1", "api"),
                    ("blog.tako.test", "/post/1", "blog"),
                    ("x.wild.tako.test", "/", "wild"),
                ]
                for host, path, app in cases:
                    r = await https_get(client, host, path)
                    assert r.status_code == 200, (host, path)
                    assert r.json()["app"] == app, (host, path)
                    assert r.json()["target"] == path
                # Host matching ignores case and port; the Host header reaches the app unchanged.
                r = await https_get(
                    client, "shop.tako.test", "/api/x", headers={"Host": "SHOP.tako.test:443"}
                )
                assert r.json()["app"] == "api"
                assert ["Host", "SHOP.tako.test:443"] in r.json()["headers"]
                r = await https_get(client, "shop.tako.test", "/", headers={"Host": "other.tako.test"})
                assert r.status_code == 404
                assert r.headers["content-type"].startswith("text/plain")
                assert "127.0.0.1" not in r.text and "Traceback" not in r.text
    finally:
        for u in ups.values():
            await u.stop()


async def test_forwarded_headers_and_hop_by_hop_removed(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _), p.https() as client:
        r = await https_get(
            client,
            "a.tako.test",
            "/echo",
            headers={
                "X-Forwarded-For": "10.0.0.1",
                "X-Forwarded-Proto": "gopher",
                "X-Forwarded-Host": "evil",
                "Connection": "X-Private, keep-alive",
                "X-Private": "secret",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic x",
                "Proxy-Foo": "1",
                "TE": "trailers",
                "X-Custom": "kept",
            },
        )
        headers = {k.lower(): v for k, v in r.json()["headers"]}
        assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-forwarded-host"] == "a.tako.test"
        assert headers["host"] == "a.tako.test"
        assert headers["x-custom"] == "kept"
        for dropped in (
            "x-private",
            "keep-alive",
            "proxy-authorization",
            "proxy-foo",
            "te",
            "connection",
        ):
            assert dropped not in headers
        r = await https_get(client, "a.tako.test", "/hop")
        assert r.text == "hop"
        assert r.headers["x-kept"] == "yes"
        for dropped in ("x-secret", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
            assert dropped not in r.headers


async def test_connection_header_cannot_drop_host_or_framing(tmp_path: Path) -> None:
    """Naming Host or the framing headers in Connection drops neither; other named headers still go."""

    async with one_app_proxy(tmp_path) as (p, _):
        requests = (
            b"POST /echo HTTP/1.1\r\nHost: a.tako.test\r\n"
            b"Connection: host, content-length, transfer-encoding, x-a\r\nX-A: 1\r\n"
            b"Content-Length: 5\r\n\r\nhello"
            b"GET /hopframe HTTP/1.1\r\nHost: a.tako.test\r\nConnection: Host\r\n\r\n"
            b"GET /echo HTTP/1.1\r\nHost: a.tako.test\r\nConnection: close\r\n\r\n"
        )
        data = await p.exchange(requests)
        responses = parse_responses(data)
        assert [r.status for r in responses] == [200, 200, 200]
        seen = json.loads(responses[0].body)
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["host"] == "a.tako.test"
        assert headers["content-length"] == "5" and seen["body_len"] == 5
        assert "x-a" not in headers
        # The response side: its Content-Length is kept, so the next response on the connection parses.
        assert responses[1].body == b"framed"
        assert responses[1].header("content-length") == "6"
        assert responses[1].header("x-b") is None
        assert json.loads(responses[2].body)["target"] == "/echo"


async def test_a_response_whose_last_transfer_coding_is_not_chunked_ends_with_the_connection(
    tmp_path: Path,
) -> None:
    # Framed as the parser frames it (until the app closes), then re-chunked for the client: complete.
    async with one_app_proxy(tmp_path) as (p, _):
        data = await p.exchange(
            b"GET /te-gzip HTTP/1.1\r\nHost: a.tako.test\r\n\r\n", until_closed=False, expect_responses=1
        )
        responses = parse_responses(data)
        assert len(responses) == 1 and responses[0].complete, data
        assert responses[0].body == b"not really gzip"
        assert responses[0].header("transfer-encoding") == "chunked"


async def test_unavailable_app_cold_start_and_dead_upstream(tmp_path: Path) -> None:
    up = await HttpUpstream("cold").start()
    late = StaticUpstream(up.port)
    started = asyncio.Event()

    async def cold_start() -> StaticUpstream:
        started.set()
        await asyncio.sleep(0)
        return late

    dead = StaticUpstream(1)  # nothing listens on port 1
    routes = {
        "starting.tako.test": StaticGate("starting", []),
        "cold.tako.test": StaticGate("cold", [], waiter=cold_start),
        "dead.tako.test": StaticGate("dead", [dead]),
    }
    try:
        async with running_proxy(tmp_path, routes) as p:
            for name in routes:
                p.issue(name)
            async with p.https() as client:
                r = await https_get(client, "starting.tako.test", "/")
                assert r.status_code == 503
                assert r.headers["retry-after"] == "2"
                assert r.text == "App is starting\n"
                r = await https_get(client, "cold.tako.test", "/after-cold-start")
                assert r.status_code == 200 and r.json()["app"] == "cold"
                assert started.is_set()
                assert late.started == late.finished == late.answered == 1 and late.in_flight == 0
                r = await https_get(client, "dead.tako.test", "/")
                assert r.status_code == 502
                assert "127.0.0.1" not in r.text and ":1" not in r.text
                assert dead.started == dead.finished == 1 and dead.answered == 0  # a 502 is not an answer
    finally:
        await up.stop()


async def test_one_connection_routes_every_request_by_its_own_host_and_path(tmp_path: Path) -> None:
    # A connection keeps its router's answer for a host routed the same on every path (client.py, _start):
    # requests that change host, or go to a host routed by path, are each routed afresh.
    ups = {name: await HttpUpstream(name).start() for name in ("web", "api", "blog")}
    gates = {name: StaticGate(name, [StaticUpstream(u.port)]) for name, u in ups.items()}
    routes = {
        "shop.tako.test": gates["web"],
        "shop.tako.test/api/*": gates["api"],
        "blog.tako.test": gates["blog"],
    }
    try:
        async with running_proxy(tmp_path, routes) as p:
            p.issue("shop.tako.test")
            hosts_paths = [
                ("blog.tako.test", "/"),
                ("blog.tako.test", "/api/x"),
                ("blog.tako.test", "/z"),
                ("shop.tako.test", "/"),
                ("shop.tako.test", "/api/x"),
                ("shop.tako.test", "/x"),
                ("shop.tako.test", "/api"),
                ("other.tako.test", "/"),
                ("blog.tako.test", "/y"),
            ]
            data = await raw_exchange(
                p.https_port,
                b"".join(
                    b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode())
                    for host, path in hosts_paths
                )
                + b"GET / HTTP/1.1\r\nHost: blog.tako.test\r\nConnection: close\r\n\r\n",
                ssl_context=p.client_context(),
                server_hostname="shop.tako.test",
            )
            responses = parse_responses(data)
            assert [r.status for r in responses] == [200, 200, 200, 200, 200, 200, 200, 404, 200, 200]
            apps = [json.loads(r.body)["app"] if r.status == 200 else None for r in responses]
            assert apps == ["blog", "blog", "blog", "web", "api", "web", "api", None, "blog", "blog"]
    finally:
        for up in ups.values():
            await up.stop()


async def test_snapshot_swap_applies_to_new_requests(tmp_path: Path) -> None:
    one, two = await HttpUpstream("one").start(), await HttpUpstream("two").start()
    try:
        async with running_proxy(
            tmp_path, {"a.tako.test": StaticGate("one", [StaticUpstream(one.port)])}
        ) as p:
            p.issue("a.tako.test")
            async with p.https() as client:
                assert (await https_get(client, "a.tako.test", "/")).json()["app"] == "one"
                p.server.set_snapshot(
                    snapshot({"a.tako.test": StaticGate("two", [StaticUpstream(two.port)])})
                )
                assert (await https_get(client, "a.tako.test", "/")).json()["app"] == "two"
    finally:
        await one.stop()
        await two.stop()


async def test_http_listener_redirects_answers_acme_and_status(tmp_path: Path) -> None:
    up = await HttpUpstream().start()
    routes = {"a.tako.test": StaticGate("a", [StaticUpstream(up.port)])}
    try:
        async with running_proxy(tmp_path, routes) as p:
            p.services.challenges["tok-123_x"] = "tok-123_x.thumbprint"
            async with p.http(follow_redirects=False) as client:
                r = await client.get("/path/x?q=1&r=%20", headers={"Host": "a.tako.test:80"})
                assert r.status_code == 301
                assert r.headers["location"] == f"https://a.tako.test:{p.https_port}/path/x?q=1&r=%20"
                # Any other method gets 308, so that a client repeats it (a POST stays a POST).
                for method in ("POST", "PUT", "DELETE", "PATCH"):
                    r = await client.request(method, "/form", headers={"Host": "a.tako.test"}, content=b"x=1")
                    assert r.status_code == 308, method
                    assert r.headers["location"] == f"https://a.tako.test:{p.https_port}/form"
                r = await client.head("/h", headers={"Host": "a.tako.test"})
                assert r.status_code == 301
                r = await client.get("/", headers={"Host": "unrouted.tako.test"})
                assert r.status_code == 404
                r = await client.get("/.well-known/acme-challenge/tok-123_x", headers={"Host": "a.tako.test"})
                assert r.status_code == 200 and r.text == "tok-123_x.thumbprint"
                r = await client.get("/.well-known/acme-challenge/other", headers={"Host": "a.tako.test"})
                assert r.status_code == 404
                p.services.document = {"apps": [{"name": "a", "state": "running"}]}
                r = await client.get("/_tako/status", headers={"Host": "anything.example"})
                assert r.status_code == 200 and r.json()["apps"][0]["name"] == "a"
            p.services.status = 503
            p.issue("a.tako.test")
            async with p.https() as client:
                r = await https_get(client, "a.tako.test", "/_tako/status")
                assert r.status_code == 503
                assert r.headers["content-type"] == "application/json"
                assert r.json()["apps"][0]["state"] == "running"
            # HEAD of a local answer carries no body, and the connection stays usable.
            data = await raw_exchange(
                p.http_port,
                b"HEAD /_tako/status HTTP/1.1\r\nHost: x\r\n\r\nGET /_tako/status HTTP/1.1\r\nHost: x\r\n"
                b"Connection: close\r\n\r\n",
            )
            head, get = data.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 503")
            assert get.startswith(b"HTTP/1.1 503")
            assert json.loads(get.split(b"\r\n\r\n", 1)[1])["apps"]
    finally:
        await up.stop()


async def test_local_answer_before_the_request_body_closes_cleanly(tmp_path: Path) -> None:
    async with running_proxy(tmp_path, {}) as p:
        # A local answer that arrives before the request body ends the connection cleanly.
        data = await raw_exchange(
            p.http_port, b"POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde"
        )
        responses = parse_responses(data)
        assert [r.status for r in responses] == [404]


async def test_http10_clients_keepalive_only_when_asked(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _):
        ctx = p.client_context()
        data = await raw_exchange(
            p.https_port,
            b"GET /bytes/5 HTTP/1.0\r\nHost: a.tako.test\r\nConnection: keep-alive\r\n\r\n"
            b"GET /bytes/6 HTTP/1.0\r\nHost: a.tako.test\r\n\r\n"
            b"GET /bytes/7 HTTP/1.0\r\nHost: a.tako.test\r\n\r\n",
            ssl_context=ctx,
            server_hostname="a.tako.test",
        )
        responses = parse_responses(data)
        assert [(r.status, r.body) for r in responses] == [(200, b"x" * 5), (200, b"x" * 6)]
        assert responses[0].header("connection") == "keep-alive"
        assert responses[1].header("connection") == "close"


async def test_http10_kept_alive_by_proxy_connection_stays_http10(tmp_path: Path) -> None:
    # llhttp reads Proxy-Connection as a Connection header: an HTTP/1.0 request it keeps alive that way is
    # still answered as HTTP/1.0 (the proxy takes a request kept alive without either header for HTTP/1.1).
    async with one_app_proxy(tmp_path) as (p, _):
        data = await raw_exchange(
            p.https_port,
            b"GET /bytes/5 HTTP/1.0\r\nHost: a.tako.test\r\nProxy-Connection: keep-alive\r\n\r\n"
            b"GET /bytes/6 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
            b"GET /bytes/7 HTTP/1.0\r\nHost: a.tako.test\r\nProxy-Connection: close\r\n\r\n"
            b"GET /bytes/8 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n",
            ssl_context=p.client_context(),
            server_hostname="a.tako.test",
        )
        responses = parse_responses(data)
        assert [(r.status, r.body) for r in responses] == [(200, b"x" * 5), (200, b"x" * 6), (200, b"x" * 7)]
        assert responses[0].header("connection") == "keep-alive"
        assert responses[1].header("connection") is None
        assert responses[2].header("connection") == "close"


async def test_absolute_form_targets_route_by_their_authority(tmp_path: Path) -> None:
    a, b = await HttpUpstream("a").start(), await HttpUpstream("b").start()
    routes = {
        "a.tako.test": StaticGate("a", [StaticUpstream(a.port)]),
        "b.tako.test": StaticGate("b", [StaticUpstream(b.port)]),
    }
    try:
        async with running_proxy(tmp_path, routes) as p:
            p.issue("a.tako.test")
            requests = (
                # The target's authority wins over the Host header (RFC 9112, 3.2.2).
                b"GET http://b.tako.test/echo?x=1 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
                # Scheme and host in any case; a query with no path.
                b"GET HTTPS://B.tako.test?y=2 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
                # HTTP/1.0 with no Host header at all.
                b"GET http://a.tako.test:443/echo HTTP/1.0\r\n\r\n"
            )
            data = await p.exchange(requests)
            responses = parse_responses(data)
            assert [r.status for r in responses] == [200, 200, 200]
            seen = [json.loads(r.body) for r in responses]
            assert [s["app"] for s in seen] == ["b", "b", "a"]
            assert [s["target"] for s in seen] == ["/echo?x=1", "/?y=2", "/echo"]
            hosts = [{k.lower(): v for k, v in s["headers"]}["host"] for s in seen]
            assert hosts == ["b.tako.test", "B.tako.test", "a.tako.test:443"]
    finally:
        await a.stop()
        await b.stop()
