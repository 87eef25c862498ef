"""An HTTP/2 stream's response head handed over as the fields the upstream parser read (upstream.py,
`_head_to_stream`; `StreamTransport.respond_fields`), not as HTTP/1.1 text read again: what that path
could get wrong against the text path it replaces. Real TLS, a real `h2` client, an app on loopback that
answers each path with exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import h2.events
import pytest
from tests.support.h2_client import H2Client
from tests.support.proxy_harness import ProxyHarness, https_get, one_app_proxy, running_proxy
from tests.support.proxy_routes import StaticGate, StaticUpstream

from tako.server.proxy import h2 as proxy_h2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.uvloop,
    pytest.mark.skipif(not proxy_h2.available(), reason="the libnghttp2 binding is not built"),
]

HOST = "a.tako.test"
TEXT = b"tako " * 1000  # 5,000 bytes: compressible, over compression.MIN_LENGTH

# Each path's answer: the bytes the app writes, in order; an asyncio.Event between two pieces holds the rest
# until the test sets it (so the pieces reach the proxy in reads of their own).
Answer = list[bytes | asyncio.Event]


class CannedApp:
    """An HTTP/1.1 app on loopback answering each request path with its `Answer` (keep-alive)."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                target = (await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1].decode()
                for piece in self.answers[target]:
                    if isinstance(piece, asyncio.Event):
                        await piece.wait()
                    else:
                        writer.write(piece)
                        await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def proxied(self, tmp_path: Path) -> AsyncIterator[ProxyHarness]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            gate = StaticGate("a", [StaticUpstream(self.port)])
            gate.compression = True
            async with running_proxy(tmp_path, {HOST: gate}) as p:
                p.issue(HOST)
                yield p
        finally:
            server.close()
            for writer in self.writers:
                writer.close()
            await asyncio.wait_for(server.wait_closed(), 5)


async def _client(p: ProxyHarness) -> H2Client:
    return await H2Client.connect(p.https_port, p.client_context(), HOST)


async def _answers(c: H2Client, paths: list[str], method: str = "GET") -> list[int]:
    ids = [c.request(path, HOST, method=method) for path in paths]
    await c.receive_until(lambda: all(c.ended(i) for i in ids))
    return ids


async def test_bodyless_answers_keep_the_content_length_the_http11_head_would_carry(tmp_path: Path) -> None:
    # 304 and HEAD keep the app's Content-Length (the length of what a GET would get); 204 never has one;
    # Content-Length: 0 ends the stream with its HEADERS. None has DATA.
    app = CannedApp(
        {
            "/304": [b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n'],
            "/204": [b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n"],
            "/empty": [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
            "/head": [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5000\r\n\r\n"],
        }
    )
    async with app.proxied(tmp_path) as p:
        c = await _client(p)
        not_modified, no_content, empty = await _answers(c, ["/304", "/204", "/empty"])
        (head,) = await _answers(c, ["/head"], method="HEAD")
        assert c.response(not_modified)[b"content-length"] == b"1234"
        assert c.response(not_modified)[b"etag"] == b'"v1"'
        assert b"content-length" not in c.response(no_content) and c.response(no_content)[b"x-a"] == b"1"
        assert c.response(empty)[b"content-length"] == b"0"
        assert c.response(head)[b"content-length"] == b"5000"
        for sid in (not_modified, no_content, empty, head):
            assert sid not in c.bodies and not c.of(h2.events.DataReceived, sid)
            ended = c.of(h2.events.StreamEnded, sid)
            assert ended and not c.of(h2.events.StreamReset, sid)
        await c.close()


async def test_interim_responses_in_reads_of_their_own_or_with_the_final_go_first(tmp_path: Path) -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    later = asyncio.Event()
    app = CannedApp(
        {
            "/apart": [hints, later, final],  # the final head comes once the client has seen the 103
            "/together": [b"HTTP/1.1 100 Continue\r\n\r\n" + hints + final],  # one read
        }
    )
    async with app.proxied(tmp_path) as p:
        c = await _client(p)
        apart = c.request("/apart", HOST)
        await c.receive_until(lambda: bool(c.of(h2.events.InformationalResponseReceived, apart)))
        later.set()
        (together,) = await _answers(c, ["/together"])
        await c.receive_until(lambda: c.ended(apart))
        for sid, statuses in ((apart, [b"103"]), (together, [b"100", b"103"])):
            interim = c.of(h2.events.InformationalResponseReceived, sid)
            assert [dict(e.headers)[b":status"] for e in interim] == statuses
            assert dict(interim[-1].headers)[b"link"] == b"</a.css>; rel=preload"
            assert c.response(sid)[b":status"] == b"200" and bytes(c.bodies[sid]) == b"final"
            kinds = [type(e) for e in c.events if getattr(e, "stream_id", None) == sid]
            first_interim = kinds.index(h2.events.InformationalResponseReceived)
            assert kinds.index(h2.events.ResponseReceived) > first_interim
        await c.close()


async def test_field_names_lower_cased_values_trimmed_and_the_request_id_last(tmp_path: Path) -> None:
    app = CannedApp(
        {
            "/": [
                b"HTTP/1.1 201 Created\r\nX-Padded:  \t value \t \r\nSET-COOKIE: a=1\r\nSet-Cookie: b=2\r\n"
                b"X-Request-Id: from-the-app\r\nContent-Length: 3\r\n\r\nabc"
            ]
        }
    )
    async with app.proxied(tmp_path) as p:
        c = await _client(p)
        sid = c.request("/", HOST, extra=[(b"x-request-id", b"req-42")])
        await c.receive_until(lambda: c.ended(sid))
        (received,) = c.of(h2.events.ResponseReceived, sid)
        assert received.headers == [
            (b":status", b"201"),
            (b"x-padded", b"value"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"x-request-id", b"req-42"),  # the id the app was sent, not the app's own
            (b"content-length", b"3"),
        ]
        assert bytes(c.bodies[sid]) == b"abc"
        await c.close()


async def test_a_length_the_binding_does_not_read_and_compressed_bodies_go_as_text(tmp_path: Path) -> None:
    # A Content-Length of 19 digits is not read by the binding (the text path takes it); a compressed body
    # has no length until its end (chunked towards the stream); a short one is not compressed.
    app = CannedApp(
        {
            "/long-length": [b"HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000003\r\n\r\nabc"],
            "/page": [b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5000\r\n\r\n" + TEXT],
            "/short": [b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nshort"],
        }
    )
    async with app.proxied(tmp_path) as p:
        c = await _client(p)
        ids = [c.request(path, HOST, extra=[(b"accept-encoding", b"gzip")]) for path in app.answers]
        await c.receive_until(lambda: all(c.ended(i) for i in ids))
        long_length, page, short = ids
        assert c.response(long_length)[b"content-length"] == b"0000000000000000003"
        assert bytes(c.bodies[long_length]) == b"abc"
        head = c.response(page)
        assert head[b"content-encoding"] == b"gzip" and b"content-length" not in head
        assert head[b"vary"] == b"Accept-Encoding"
        assert zlib.decompress(bytes(c.bodies[page]), 31) == TEXT
        assert c.response(short)[b"content-length"] == b"5" and b"content-encoding" not in c.response(short)
        assert bytes(c.bodies[short]) == b"short"
        for sid in ids:
            assert not c.of(h2.events.StreamReset, sid)
        await c.close()


async def test_bytes_out_counts_what_the_http11_head_would_have_been(tmp_path: Path) -> None:
    # The access log and the counters read cycle.bytes_out: for a stream, the HTTP/1.1 response the upstream
    # side would have written, as before the fields went to the stream directly. Same answers, same request
    # id, over HTTP/1.1 keep-alive and over HTTP/2: the same count.
    paths = ["/bytes/1000", "/status/204", "/status/304", "/interim", "/fields/60", "/hop", "/chunked/5000"]
    rid = {"x-request-id": "same-id-for-both"}
    async with one_app_proxy(tmp_path) as (p, _up):
        counters = p.server.traffic.for_app("a")

        async def counted() -> int:
            deadline = asyncio.get_running_loop().time() + 10
            while counters.in_flight:
                assert asyncio.get_running_loop().time() < deadline, "requests still in flight"
                await asyncio.sleep(0.01)
            return counters.bytes_out

        before = await counted()
        async with p.https() as client:
            for path in paths:
                r = await https_get(client, HOST, path, headers=rid)
                assert r.http_version == "HTTP/1.1"
            r = await https_get(client, HOST, "/bytes/1000", method="HEAD", headers=rid)
        http11 = await counted() - before

        before = await counted()
        async with p.https(http2=True) as client:
            for path in paths:
                r = await https_get(client, HOST, path, headers=rid)
                assert r.http_version == "HTTP/2"
            r = await https_get(client, HOST, "/bytes/1000", method="HEAD", headers=rid)
            assert r.headers["content-length"] == "1000"
        assert await counted() - before == http11 > 1000 + 5000
