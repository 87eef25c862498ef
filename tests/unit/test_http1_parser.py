"""The compiled request parser (_http1.pyx, llhttp with its callbacks in C) against its httptools equivalent
(http1_parser.RequestParser): the same calls with the same arguments, and the same errors, for any
request stream cut into any reads."""

from __future__ import annotations

import contextlib
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tako.server.proxy import client, http1_parser, upstream
from tako.server.proxy.compiled import HTTP1_BINDING, binding_problem, mode

_http1 = None
if mode() == "compiled":  # the binding calls the compiled connections (wire.pxd): never loaded otherwise
    with contextlib.suppress(ImportError):  # a checkout without a C compiler
        from tako.server.proxy import _http1

pytestmark = pytest.mark.skipif(
    _http1 is None or binding_problem(HTTP1_BINDING) is not None,
    reason="the HTTP/1.1 parser binding is not built (python setup.py build_ext --inplace), or the proxy "
    "runs from source",
)


_KIND = client.REQUEST_HEADER_TABLE[0]  # lower-case name -> kind


class Recorder:
    """A protocol that records every call a parser makes."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.events: list[Any] = []
        self.fail_on = fail_on

    def _record(self, event: Any) -> None:
        self.events.append(event)
        if self.fail_on is not None and (event if isinstance(event, str) else event[0]) == self.fail_on:
            raise RuntimeError(f"refused at {self.fail_on}")

    def on_message_begin(self) -> None:
        self._record("begin")

    def on_head(self, *args: Any) -> None:
        self._record(("head", *args))

    def on_body(self, body: bytes) -> None:
        # Bodies arrive in pieces that depend on the reads; compared joined (_joined_bodies).
        self._record(("body", body))

    def on_message_complete(self) -> None:
        self._record("complete")


def _parser(kind: type, protocol: Recorder) -> Any:
    """A parser with the header table its connection (ClientConnection, UpstreamConnection) gives it."""
    compiled = kind in (_http1.RequestParser, _http1.ResponseParser)
    table = _http1.HeaderTable if compiled else http1_parser.HeaderTable
    response = kind in (_http1.ResponseParser, http1_parser.ResponseParser)
    return kind(
        protocol, table(*(upstream.RESPONSE_HEADER_TABLE if response else client.REQUEST_HEADER_TABLE))
    )


def _run(kind: type, data: bytes, cuts: list[int], fail_on: str | None = None) -> list[Any]:
    protocol = Recorder(fail_on)
    parser = _parser(kind, protocol)
    outcome: Any = "ok"
    start = 0
    try:
        for cut in [*sorted(cuts), len(data)]:
            if cut > start:
                parser.feed_data(data[start:cut])
                start = cut
    except httptools.HttpParserUpgrade as exc:
        outcome = ("upgrade", start + exc.args[0])
    except httptools.HttpParserError as exc:
        outcome = ("error", type(exc).__name__, str(exc.__context__))
    return [*_joined_bodies(protocol.events), outcome]


def _joined_bodies(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for event in events:
        if isinstance(event, tuple) and event[0] == "body" and out and out[-1][0:1] == ("body",):
            out[-1] = ("body", out[-1][1] + event[1])
        else:
            out.append(event)
    return out


_NAMES = st.sampled_from(
    [
        b"Host",
        b"HOST",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Connection",
        b"connection",
        b"Upgrade",
        b"X-Forwarded-For",
        b"Expect",
        b"X-Request-Id",
        b"Accept-Encoding",
        b"Proxy-Connection",
        b"Proxy-Authorization",
        b"Proxy-Anything",
        b"X-Forwarded-Proto",
        b"Keep-Alive",
        b"TE",
        b"Trailer",
        b"User-Agent",
        b"Cookie",
        b"X-Custom",
        b"proxy",
        b"Bad Name",
        b"",
    ]
)
_VALUES = st.sampled_from(
    [
        b"",
        b"x",
        b" padded  ",
        b"gzip, br",
        b"close",
        b"keep-alive",
        b"upgrade",
        b"chunked",
        b"5",
        b"0",
        b"a\x80b",
    ]
)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=12)


def _request(
    method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]], tail: bytes
) -> bytes:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return method + b" " + target + b" " + version + b"\r\n" + lines + b"\r\n" + tail


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT", b"OPTIONS", b"BREW"]),
    target=st.sampled_from([b"/", b"/a?b=c", b"*", b"http://example.com/x", b"/%2e%2e/"]),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2"]),
    headers=_HEADERS,
    tail=st.sampled_from(
        [
            b"",
            b"abcde",
            b"3\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nTrailer-Field: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\n",
        ]
    ),
    second=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_same_calls_as_httptools(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    tail: bytes,
    second: bool,
    cuts: list[int],
) -> None:
    data = _request(method, target, version, headers, tail)
    if second:
        data += _request(b"GET", b"/next", b"HTTP/1.1", [(b"Host", b"h"), (b"X-A", b"1")], b"")
    assert _run(_http1.RequestParser, data, cuts) == _run(http1_parser.RequestParser, data, cuts)


@pytest.mark.parametrize("fail_on", ["begin", "head", "body", "complete"])
def test_a_refusing_protocol_is_an_error_with_its_exception_as_context(fail_on: str) -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    compiled = _run(_http1.RequestParser, data, [], fail_on)
    assert compiled == _run(http1_parser.RequestParser, data, [], fail_on)
    assert compiled[-1] == ("error", "HttpParserCallbackError", f"refused at {fail_on}")


def test_the_head_as_the_connection_hears_it() -> None:
    data = (
        b"POST /up?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nProxy-Thing: 1\r\n"
        b"X-Forwarded-Proto: http\r\nAccept-Encoding: br\r\nTransfer-Encoding: chunked\r\nX-Empty:\r\n\r\n"
        b"3\r\nabc\r\n0\r\nIgnored: trailer\r\n\r\n"
    )
    events = _run(_http1.RequestParser, data, [5, 17, 40, 41, 90])
    head = events[1]
    assert head == (
        "head",
        b"POST",
        b"/up?x=1",
        "1.1",
        True,
        False,
        b"Host: example.com\r\nUser-Agent: t\r\nAccept-Encoding: br\r\nX-Empty: \r\n",
        [
            _KIND[b"host"],
            b"example.com",
            _KIND[b"accept-encoding"],
            b"br",
            _KIND[b"transfer-encoding"],
            b"chunked",
        ],
        7,
        sum(
            len(n) + len(v) + 4
            for n, v in [
                (b"Host", b"example.com"),
                (b"User-Agent", b"t"),
                (b"Proxy-Thing", b"1"),
                (b"X-Forwarded-Proto", b"http"),
                (b"Accept-Encoding", b"br"),
                (b"Transfer-Encoding", b"chunked"),
                (b"X-Empty", b""),
            ]
        ),
    )
    assert events[2:] == [("body", b"abc"), "complete", "ok"]


def test_an_upgrade_stops_at_the_end_of_the_head() -> None:
    head = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    events = _run(_http1.RequestParser, head + b"\x81\x00", [3])
    assert events[-1] == ("upgrade", len(head))
    assert events[1][5] is True  # upgrade


def test_a_large_head_is_parsed_whole_and_its_buffer_let_go() -> None:
    big = [(b"X-Big-%d" % i, b"v" * 1000) for i in range(40)]
    data = _request(b"GET", b"/", b"HTTP/1.1", [(b"Host", b"h"), *big], b"")
    data += _request(b"GET", b"/2", b"HTTP/1.1", [(b"Host", b"h")], b"")
    events = _run(_http1.RequestParser, data, list(range(0, len(data), 999)))
    assert events == _run(http1_parser.RequestParser, data, [])
    assert len(events[1][6]) > 40_000
    assert events[4][6] == b"Host: h\r\n"


_RESPONSE_NAMES = st.sampled_from(
    [
        b"Content-Length",
        b"content-length",
        b"Transfer-Encoding",
        b"Connection",
        b"Keep-Alive",
        b"Upgrade",
        b"X-Request-Id",
        b"Trailer",
        b"Content-Type",
        b"Set-Cookie",
        b"Vary",
        b"Proxy-Anything",
        b"Bad Name",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    interim=st.sampled_from(
        [b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]
    ),
    status=st.sampled_from(
        [
            b"200 OK",
            b"204 No Content",
            b"304 Not Modified",
            b"101 Switching Protocols",
            b"404 ",
            b"99 X",
            b"2000 X",
        ]
    ),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    headers=st.lists(st.tuples(_RESPONSE_NAMES, _VALUES), max_size=10),
    tail=st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"]),
    second=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_responses_same_calls_as_httptools(
    interim: bytes,
    status: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    tail: bytes,
    second: bool,
    cuts: list[int],
) -> None:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    data = interim + version + b" " + status + b"\r\n" + lines + b"\r\n" + tail
    if second:
        data += b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: s\r\n\r\nok"
    compiled = _run(_http1.ResponseParser, data, cuts)
    assert compiled == _run(http1_parser.ResponseParser, data, cuts)


def test_a_response_head_as_the_upstream_connection_hears_it() -> None:
    data = (
        b"HTTP/1.1 200 Fine Thanks\r\nServer: app\r\nContent-Length: 5\r\nConnection: keep-alive, x-gone\r\n"
        b"Keep-Alive: timeout=5\r\nX-Request-Id: from-app\r\nX-Gone: 1\r\n\r\nhello"
    )
    events = _run(_http1.ResponseParser, data, [9, 30])
    kind = upstream.RESPONSE_HEADER_TABLE[0]
    assert events == [
        "begin",
        (
            "head",
            200,
            b"Fine Thanks",
            True,
            False,
            b"Server: app\r\nX-Gone: 1\r\n",
            [kind[b"content-length"], b"5", kind[b"connection"], b"keep-alive, x-gone"],
        ),
        ("body", b"hello"),
        "complete",
        "ok",
    ]
