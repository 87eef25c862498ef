"""An HTTP/2 stream's request reaches the request cycle as the fields libnghttp2 decoded, not as HTTP/1.1
text parsed again: what the HTTP/1.1 parser would have refused, or what its callbacks would have done, must
still happen. Real TLS connections (the `h2` package frames) to a real `ProxyServer` and HTTP/1.1 app."""

from __future__ import annotations

import json
from pathlib import Path

import h2.errors
import h2.events
import pytest
from tests.support.h2_client import H2Client
from tests.support.proxy_harness import ProxyHarness, one_app_proxy

from tako.config.server import ProxySettings
from tako.server.proxy import h2 as proxy_h2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.uvloop,
    pytest.mark.skipif(not proxy_h2.available(), reason="the libnghttp2 binding is not built"),
]

HOST = "a.tako.test"


async def _client(p: ProxyHarness) -> H2Client:
    return await H2Client.connect(p.https_port, p.client_context(), HOST, validate=False)


def _send(c: H2Client, fields: list[tuple[bytes, bytes]], *body: bytes, trailers: list | None = None) -> int:
    """A request whose body is `body`, one DATA frame each, then `trailers` if any."""
    sid: int = c.conn.get_next_available_stream_id()
    c.conn.send_headers(sid, fields, end_stream=not body)
    for i, chunk in enumerate(body):
        c.conn.send_data(sid, chunk, end_stream=i == len(body) - 1 and not trailers)
    if trailers:
        c.conn.send_headers(sid, trailers, end_stream=True)
    c.flush()
    return sid


def _get(path: bytes = b"/echo", *, method: bytes = b"GET", authority: bytes | None = HOST.encode()) -> list:
    fields = [(b":method", method), (b":path", path), (b":scheme", b"https")]
    return fields + ([(b":authority", authority)] if authority is not None else [])


async def _status(c: H2Client, sid: int) -> bytes:
    await c.receive_until(lambda: c.ended(sid))
    return c.response(sid)[b":status"]


def _seen(c: H2Client, sid: int) -> dict:
    seen = json.loads(bytes(c.bodies[sid]))
    seen["fields"] = [(k.lower(), v) for k, v in seen["headers"]]
    return seen


async def test_authority_wins_over_a_host_field_and_routes_the_request(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, up):
        c = await _client(p)
        sid = _send(c, [*_get(), (b"host", b"b.tako.test"), (b"x-a", b"1")])
        assert await _status(c, sid) == b"200"
        fields = _seen(c, sid)["fields"]
        assert [v for k, v in fields if k == "host"] == [HOST]
        assert dict(fields)["x-forwarded-host"] == HOST and dict(fields)["x-a"] == "1"
        # The other way round, the host field alone would route it elsewhere: unrouted there (404).
        other = _send(c, [*_get(authority=b"b.tako.test"), (b"host", HOST.encode())])
        assert await _status(c, other) == b"404"
        assert up.requests == 1
        await c.close()


async def test_a_host_field_without_authority_routes_and_two_or_none_are_refused(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, up):
        c = await _client(p)
        one = _send(c, [*_get(authority=None), (b"host", HOST.encode())])
        two = _send(c, [*_get(authority=None), (b"host", HOST.encode()), (b"host", b"b.tako.test")])
        none = _send(c, _get(authority=None))  # as an HTTP/1.1 request without Host
        await c.receive_until(lambda: all(c.ended(s) for s in (one, two, none)))
        assert c.response(one)[b":status"] == b"200"
        assert [v for k, v in _seen(c, one)["fields"] if k == "host"] == [HOST]
        for refused in (two, none):  # by libnghttp2 (RFC 9113, 8.3.1), before they reach the proxy
            reset = c.of(h2.events.StreamReset, refused)
            assert reset and reset[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert up.requests == 1
        await c.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [(b"FOO", b"/echo"), (b"get", b"/echo"), (b"GET", b"/caf\xc3\xa9"), (b"CONNECT", None)],
    ids=["unknown-method", "lower-case-method", "non-ascii-path", "connect"],
)
async def test_what_the_http11_parser_refuses_is_refused(
    tmp_path: Path, method: bytes, path: bytes | None
) -> None:
    # libnghttp2 takes any token as :method and any visible byte in :path; llhttp, which parsed these
    # requests when they were written out as HTTP/1.1, does not (400), and CONNECT is not proxied (405).
    async with one_app_proxy(tmp_path) as (p, up):
        c = await _client(p)
        fields = [(b":method", method), (b":authority", HOST.encode())]
        if path is not None:
            fields[1:1] = [(b":path", path), (b":scheme", b"https")]
        bad = _send(c, fields)
        await c.receive_until(lambda: c.ended(bad))
        assert c.response(bad)[b":status"] == (b"405" if method == b"CONNECT" else b"400")
        await c.close()
        c = await _client(p)
        ok = _send(c, _get(method=b"PURGE"))  # a method llhttp knows, if not a common one
        await c.receive_until(lambda: c.ended(ok))
        assert c.response(ok)[b":status"] == b"200" and _seen(c, ok)["method"] == "PURGE"
        assert up.requests == 1
        await c.close()


async def test_field_limits_apply_to_decoded_fields(tmp_path: Path) -> None:
    settings = ProxySettings(max_headers=12, max_body_bytes=1000)
    async with one_app_proxy(tmp_path, settings) as (p, up):
        c = await _client(p)
        many = _send(c, [*_get(), *((b"x-%d" % i, b"v") for i in range(12))])
        announced = _send(c, [*_get(b"/sink", method=b"POST"), (b"content-length", b"1001")], b"x" * 1001)
        await c.receive_until(lambda: c.ended(many) and c.ended(announced))
        assert c.response(many)[b":status"] == b"431"
        assert c.response(announced)[b":status"] == b"413"
        await c.close()
        c = await _client(p)
        sid = _send(c, _get(b"/sink", method=b"POST"), b"x" * 800, b"x" * 800)  # counted as it comes
        assert await _status(c, sid) == b"413"
        assert up.requests == 0
        await c.close()


async def test_fields_are_forwarded_as_http11_forwards_them(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _up):
        c = await _client(p)
        sent = [
            (b"x-forwarded-for", b"10.9.9.9"),
            (b"x-forwarded-proto", b"http"),
            (b"proxy-authorization", b"Basic eA=="),
            (b"te", b"trailers"),
            (b"x-request-id", b"client-id-1"),
            (b"cookie", b"a=1"),
            (b"accept-encoding", b"gzip"),
            (b"cookie", b"b=2"),
        ]
        sid = _send(c, [*_get(), *sent])
        with_body = _send(c, [*_get(b"/echo", method=b"POST"), (b"content-length", b"5")], b"hello")
        streamed = _send(c, _get(b"/echo", method=b"POST"), b"abc", b"defg")
        await c.receive_until(lambda: all(c.ended(s) for s in (sid, with_body, streamed)))
        fields = _seen(c, sid)["fields"]
        names = [k for k, _v in fields]
        assert "proxy-authorization" not in names and "te" not in names
        assert [v for k, v in fields if k == "x-forwarded-for"] == ["10.9.9.9, 127.0.0.1"]
        assert [v for k, v in fields if k == "x-forwarded-proto"] == ["https"]
        assert [v for k, v in fields if k == "x-request-id"] == ["client-id-1"]
        assert [v for k, v in fields if k == "cookie"] == ["a=1; b=2"]
        assert c.response(sid)[b"x-request-id"] == b"client-id-1"
        posted = _seen(c, with_body)
        assert posted["body_len"] == 5 and dict(posted["fields"])["content-length"] == "5"
        buffered = _seen(c, streamed)  # received whole before it is forwarded ([proxy] request_buffering)
        assert buffered["body_len"] == 7 and dict(buffered["fields"])["content-length"] == "7"
        assert not c.of(h2.events.StreamReset)
        await c.close()


async def test_a_body_without_content_length_is_streamed_chunked(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path, ProxySettings(request_buffering=False)) as (p, _up):
        c = await _client(p)
        sid = _send(c, _get(b"/echo", method=b"POST"), b"abc", b"defg", trailers=[(b"x-trailer", b"dropped")])
        await c.receive_until(lambda: c.ended(sid))
        seen = _seen(c, sid)
        assert seen["body_len"] == 7 and dict(seen["fields"])["transfer-encoding"] == "chunked"
        assert "x-trailer" not in dict(seen["fields"])
        await c.close()
