"""Strict parsing: every ambiguous or malformed request shape is refused with 400 and a close.

Nothing of a refused request may reach the app (`up.requests` stays 0), and a valid request pipelined
before a bad one is still answered first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.proxy_harness import one_app_proxy, parse_responses

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

H = b"Host: a.tako.test\r\n"


def post(head: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    """A POST to the app's sink: `head` is its header lines after Host (each ending in CRLF)."""
    return b"POST /sink HTTP/" + version + b"\r\n" + H + head + b"\r\n" + body


SHAPES: dict[str, tuple[bytes, int]] = {
    "cl-and-te": (post(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    "te-and-cl": (post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"0\r\n\r\n"), 400),
    "duplicate-cl-same": (post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), 400),
    "duplicate-cl-diff": (post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"), 400),
    "cl-list": (post(b"Content-Length: 3, 3\r\n", b"abc"), 400),
    "cl-sign": (post(b"Content-Length: +3\r\n", b"abc"), 400),
    "cl-hex": (post(b"Content-Length: 0x3\r\n", b"abc"), 400),
    "te-gzip": (post(b"Transfer-Encoding: gzip\r\n"), 400),
    "te-gzip-chunked": (post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 400),
    "te-chunked-twice": (
        post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    "te-in-http10": (post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", version=b"1.0"), 400),
    "te-space-before-colon": (post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), 400),
    "bad-chunk-size": (post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    "chunk-size-overflow": (
        post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\nab\r\n0\r\n\r\n"),
        400,
    ),
    "chunk-missing-crlf": (post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabcX0\r\n\r\n"), 400),
    "chunk-bare-lf": (post(b"Transfer-Encoding: chunked\r\n", b"3\nabc\n0\n\n"), 400),
    "bare-lf-request-line": (b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    "bare-lf-header": (b"GET / HTTP/1.1\r\nHost: a.tako.test\nX: y\r\n\r\n", 400),
    "bare-cr-header": (b"GET / HTTP/1.1\r\nHost: a.tako.test\rX: y\r\n\r\n", 400),
    "cr-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X: y\rz\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X: y\r\n z\r\n\r\n", 400),
    "obs-fold-tab": (b"GET / HTTP/1.1\r\n" + H + b"X: y\r\n\tz\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X: y\x00z\r\n\r\n", 400),
    "duplicate-host": (b"GET / HTTP/1.1\r\n" + H + b"Host: b.tako.test\r\n\r\n", 400),
    "missing-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "bad-host": (b"GET / HTTP/1.1\r\nHost: a.tako.test:80:80\r\n\r\n", 400),
    "host-port-out-of-range": (b"GET / HTTP/1.1\r\nHost: a.tako.test:99999\r\n\r\n", 400),
    "host-port-zero": (b"GET / HTTP/1.1\r\nHost: a.tako.test:0\r\n\r\n", 400),
    "host-port-sign": (b"GET / HTTP/1.1\r\nHost: a.tako.test:+443\r\n\r\n", 400),
    "host-port-junk": (b"GET / HTTP/1.1\r\nHost: a.tako.test:443x\r\n\r\n", 400),
    "absolute-form-port-out-of-range": (b"GET http://a.tako.test:65536/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "upgrade-with-content-length": (
        b"GET /echo HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: foo\r\nContent-Length: 135\r\n\r\n",
        400,
    ),
    "upgrade-with-chunked-body": (
        b"GET /echo HTTP/1.1\r\n"
        + H
        + b"Connection: Upgrade\r\nUpgrade: foo\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "absolute-form-userinfo": (b"GET http://user@a.tako.test/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute-form-other-scheme": (b"GET ftp://a.tako.test/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute-form-no-authority": (b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-without-slash": (b"GET a.tako.test/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "connect": (b"CONNECT a.tako.test:443 HTTP/1.1\r\n" + H + b"\r\n", 405),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_smuggling_shape_refused(tmp_path: Path, shape: str) -> None:
    request, status = SHAPES[shape]

    async with one_app_proxy(tmp_path) as (p, up):
        valid = b"GET /echo?first HTTP/1.1\r\n" + H + b"\r\n"
        data = await p.exchange(valid + request)
        responses = parse_responses(data)
        assert [r.status for r in responses] == [200, status]
        assert b"/echo?first" in responses[0].body
        assert responses[1].header("connection") == "close"
        assert up.requests == 1  # only the valid request reached the app
