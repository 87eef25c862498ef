"""Response compression through the real proxy: zstd, br and gzip for what is worth it, streamed, and
nothing touched where it must not be (an app's own encoding, ranges, no-transform, small bodies, HEAD...).

The app is a scripted HTTP/1.1 server on loopback: each path answers with exact bytes, so the tests can
lie about lengths, cut a body midway or hold a stream open until the client has seen its first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import brotli
import httpx
import psutil
import pytest
import zstandard
from tests.support.h2_client import H2Client
from tests.support.proxy_harness import ProxyHarness, https_get, parse_responses, raw_exchange, running_proxy
from tests.support.proxy_process import proxy_process
from tests.support.proxy_routes import StaticGate, StaticUpstream
from tests.support.server_process import TakoServer

from tako.server.proxy import h2 as proxy_h2

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

HOST = "a.tako.test"
PAGE = b"<!DOCTYPE html><html><body>" + b"".join(b"<p>row %d of the table</p>\n" % i for i in range(2000))
Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


def head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def page(status: str = "200 OK", body: bytes = PAGE, **headers: str) -> bytes:
    headers.setdefault("Content_Type", "text/html; charset=utf-8")
    return head(status, Content_Length=str(len(body)), **headers) + body


@dataclass
class ScriptedApp:
    """An HTTP/1.1 app server answering each path with fixed bytes or a script (keep-alive)."""

    answers: dict[str, bytes | Script] = field(default_factory=dict)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                path = request.split(b" ", 2)[1].decode()
                answer = self.answers[path]
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                else:
                    await answer(writer)
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedApp]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await asyncio.wait_for(self._server.wait_closed(), 5)


@contextlib.asynccontextmanager
async def app_proxy(
    tmp_path: Path, app: ScriptedApp, *, compression: bool = True
) -> AsyncIterator[ProxyHarness]:
    async with app.running():
        gate = StaticGate("a", [StaticUpstream(app.port)])
        gate.compression = compression
        async with running_proxy(tmp_path, {HOST: gate}) as p:
            p.issue(HOST)
            yield p


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return zlib.decompress(data, 31)
    if coding == "br":
        return brotli.decompress(data)  # type: ignore[no-any-return]
    assert coding == "zstd"
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def request(path: str, accept: str | None = "gzip, deflate, br, zstd", method: str = "GET") -> bytes:
    extra = f"Accept-Encoding: {accept}\r\n" if accept is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode("latin-1")


@pytest.mark.parametrize(
    ("accept", "coding"), [("gzip, deflate, br, zstd", "zstd"), ("br", "br"), ("gzip", "gzip")]
)
async def test_a_page_is_compressed_with_the_coding_the_client_prefers(
    tmp_path: Path, accept: str, coding: str
) -> None:
    app = ScriptedApp({"/": page(ETag='"v1"', Vary="Cookie")})
    async with app_proxy(tmp_path, app) as p:
        # Two requests pipelined on one connection: both compressed, the connection kept alive after.
        data = await p.exchange([request("/", accept) * 2], until_closed=False, expect_responses=2)
    responses = parse_responses(data)
    assert len(responses) == 2
    for r in responses:
        assert r.complete and r.status == 200
        assert r.header("Content-Encoding") == coding
        assert r.header("Content-Length") is None and r.header("Transfer-Encoding") == "chunked"
        assert r.header("Vary") == "Cookie, Accept-Encoding"
        assert r.header("ETag") == 'W/"v1"'  # the encoded bytes are not the ones the app's tag names
        assert decode(coding, r.body) == PAGE
        assert len(r.body) < len(PAGE) // 4


async def test_httpx_gets_json_compressed_and_decodes_it(tmp_path: Path) -> None:
    body = b"[" + b",".join(b'{"id":%d,"name":"item %d"}' % (i, i) for i in range(500)) + b"]"
    app = ScriptedApp({"/api": page(body=body, Content_Type="application/vnd.api+json")})
    async with app_proxy(tmp_path, app) as p, p.https() as client:
        for _ in range(3):  # keep-alive after compressed responses
            r = await https_get(client, HOST, "/api")
            assert r.headers["content-encoding"] == "zstd" and r.content == body
            assert r.headers["vary"] == "Accept-Encoding"


@pytest.mark.parametrize(
    ("case", "answer", "accept"),
    [
        ("no Accept-Encoding", page(), None),
        ("identity only", page(), "identity"),
        ("codings it cannot use", page(), "deflate, compress"),
        ("small body", page(body=b"<p>short</p>"), "gzip"),
        ("image", page(body=b"\x89PNG" * 1000, Content_Type="image/png"), "gzip"),
        ("no Content-Type", head(Content_Length=str(len(PAGE))) + PAGE, "gzip"),
        ("the app's coding, odd case", page(Content_Encoding="GZip"), "gzip"),
        ("the app's codings, a list", page(Content_Encoding="gzip, br"), "gzip"),
        ("identity set by the app", page(Content_Encoding="identity"), "gzip"),
        ("no-transform", page(Cache_Control="public, No-Transform"), "gzip"),
        (
            "partial content",
            page("206 Partial Content", Content_Range=f"bytes 0-{len(PAGE) - 1}/99999"),
            "gzip",
        ),
        ("Content-Range on a 200", page(Content_Range=f"bytes 0-{len(PAGE) - 1}/{len(PAGE)}"), "gzip"),
    ],
)
async def test_responses_left_as_they_are(
    tmp_path: Path, case: str, answer: bytes, accept: str | None
) -> None:
    app = ScriptedApp({"/": answer})
    async with app_proxy(tmp_path, app) as p:
        data = await p.exchange(request("/", accept), until_closed=False, expect_responses=1)
    (r,) = parse_responses(data)
    assert r.complete, case
    original = parse_responses(answer)[0]
    assert r.header("Content-Encoding") == original.header("Content-Encoding"), case
    assert r.header("Content-Length") == str(len(original.body)), case
    assert r.body == original.body, case


async def test_head_and_304_are_not_encoded(tmp_path: Path) -> None:
    app = ScriptedApp({"/": page(), "/nm": head("304 Not Modified", ETag='"v1"', Content_Type="text/html")})
    async with app_proxy(tmp_path, app) as p:
        head_only = await p.exchange(
            request("/", "gzip", method="HEAD").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        )
        data = await p.exchange(request("/nm", "gzip"), until_closed=False, expect_responses=1)
    assert head_only.startswith(b"HTTP/1.1 200 ") and head_only.endswith(b"\r\n\r\n")  # no body
    assert b"Content-Encoding" not in head_only and b"Content-Length: %d\r\n" % len(PAGE) in head_only
    (not_modified,) = parse_responses(data)
    assert not_modified.status == 304 and not_modified.header("ETag") == '"v1"'
    assert not_modified.header("Content-Encoding") is None


async def test_compression_off_for_the_app(tmp_path: Path) -> None:
    app = ScriptedApp({"/": page()})
    async with app_proxy(tmp_path, app, compression=False) as p:
        data = await p.exchange(request("/", "gzip, br, zstd"), until_closed=False, expect_responses=1)
    (r,) = parse_responses(data)
    assert r.header("Content-Encoding") is None and r.body == PAGE


async def test_a_stream_arrives_as_it_is_produced(tmp_path: Path) -> None:
    """Server-sent events: each event reaches the client, decodable, before the app writes the next."""
    seen = [asyncio.Event() for _ in range(3)]

    async def events(writer: asyncio.StreamWriter) -> None:
        writer.write(head(Content_Type="text/event-stream", Transfer_Encoding="chunked"))
        for i, event in enumerate(seen):
            data = b"data: event %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.wait_for(event.wait(), 10)  # the client decoded this one
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    app = ScriptedApp({"/events": events})
    async with app_proxy(tmp_path, app) as p, p.https() as client:
        for coding in ("zstd", "br", "gzip"):
            for event in seen:
                event.clear()
            got = b""
            async with client.stream(
                "GET",
                "/events",
                headers={"Host": HOST, "Accept-Encoding": coding},
                extensions={"sni_hostname": HOST},
            ) as r:
                assert r.headers["content-encoding"] == coding
                async for piece in r.aiter_bytes():
                    got += piece
                    for i, event in enumerate(seen):
                        if b"event %d\n\n" % i in got:
                            event.set()
            assert got == b"data: event 0\n\ndata: event 1\n\ndata: event 2\n\n"


async def test_a_body_cut_midway_is_an_error_for_the_client(tmp_path: Path) -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(head(Content_Type="text/html", Content_Length=str(len(PAGE))) + PAGE[: len(PAGE) // 2])
        await writer.drain()
        writer.close()

    app = ScriptedApp({"/cut": cut})
    async with app_proxy(tmp_path, app) as p:
        data = await p.exchange(request("/cut", "gzip"))  # until the proxy closes
        (r,) = parse_responses(data)
        assert r.header("Content-Encoding") == "gzip"
        assert not r.complete  # no last chunk: not a valid-looking shorter body
        async with p.https() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await https_get(client, HOST, "/cut")


async def test_a_body_that_ends_when_the_app_closes_is_encoded_to_its_end(tmp_path: Path) -> None:
    """No length and not chunked: the body ends with the app's connection; the encoded stream is finished
    and the chunked response to the client completes."""

    async def until_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n")
        for i in range(0, len(PAGE), 10_000):
            writer.write(PAGE[i : i + 10_000])
            await writer.drain()
        writer.close()

    app = ScriptedApp({"/": until_close})
    async with app_proxy(tmp_path, app) as p:
        for coding in ("zstd", "br", "gzip"):
            data = await p.exchange(request("/", coding), until_closed=False, expect_responses=1)
            (r,) = parse_responses(data)
            assert r.complete and r.header("Content-Encoding") == coding
            assert decode(coding, r.body) == PAGE


async def test_an_app_sending_more_than_its_content_length(tmp_path: Path) -> None:
    """The announced length is what the response is; the rest is not passed on as a body."""
    body = PAGE[:2000]
    app = ScriptedApp(
        {"/lie": head(Content_Type="text/plain", Content_Length=str(len(body))) + PAGE, "/": page()}
    )
    async with app_proxy(tmp_path, app) as p:
        data = await p.exchange(
            request("/lie", "gzip") + request("/", "br"), until_closed=False, expect_responses=2
        )
    first, second = parse_responses(data)
    assert decode("gzip", first.body) == body
    assert decode("br", second.body) == PAGE


async def test_an_http10_client_gets_a_close_delimited_encoded_body(tmp_path: Path) -> None:
    app = ScriptedApp({"/": page()})
    async with app_proxy(tmp_path, app) as p:
        data = await p.exchange(f"GET / HTTP/1.0\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n".encode())
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    assert b"Content-Encoding: gzip" in head_bytes and b"Transfer-Encoding" not in head_bytes
    assert decode("gzip", body) == PAGE


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        (", ".join(f"junk-{i};q=0.{i % 10}" for i in range(1000)) + ", gzip", None),  # past the elements read
        ("gzip;q=abc, br", "br"),  # an unreadable q-value drops its element only
        ("\xff\xfe;;;==,,br;q=0.5,*;q=0.1", "br"),  # obs-text and empty parameters
        ("GZIP;Q=1, ZSTD;Q=0", "gzip"),
    ],
)
async def test_hostile_accept_encoding_values(tmp_path: Path, accept: str, coding: str | None) -> None:
    app = ScriptedApp({"/": page()})
    async with app_proxy(tmp_path, app) as p:
        data = await p.exchange(request("/", accept), until_closed=False, expect_responses=1)
    (r,) = parse_responses(data)
    assert r.status == 200 and r.header("Content-Encoding") == coding
    assert (decode(coding, r.body) if coding else r.body) == PAGE


@pytest.mark.skipif(not proxy_h2.available(), reason="the libnghttp2 binding is not built")
async def test_http2_streams_are_compressed_alike(tmp_path: Path) -> None:
    """An HTTP/2 request goes through the same response path: encoded, Vary merged, no content-length."""
    app = ScriptedApp({"/": page(ETag='"v2"')})
    async with app_proxy(tmp_path, app) as p:
        client = await H2Client.connect(p.https_port, p.client_context(), HOST)
        try:
            ids = [
                client.request("/", HOST, extra=[(b"accept-encoding", coding)]) for coding in (b"br", b"gzip")
            ]
            await client.receive_until(lambda: all(client.ended(i) for i in ids))
            for stream_id, coding in zip(ids, ("br", "gzip"), strict=True):
                head = client.response(stream_id)
                assert head[b"content-encoding"] == coding.encode() and b"content-length" not in head
                assert head[b"vary"] == b"Accept-Encoding" and head[b"etag"] == b'W/"v2"'
                assert decode(coding, bytes(client.bodies[stream_id])) == PAGE
        finally:
            await client.close()


@pytest.mark.deadline(180)
async def test_the_switch_reaches_every_process_of_a_real_tako_server(tmp_path: Path) -> None:
    """app.json's compression (from [tako] compression) reaches the proxies of every serving process."""
    server = TakoServer(app_settings={"healthy_timeout": 3.0})
    server.config.write_text(server.config.read_text() + "\n[server]\nworkers = 2\n")
    big = "tako " * 400  # a 2,000-byte text/plain answer of the test app (/env/BIG)
    try:
        await asyncio.to_thread(server.start)
        for compression in (True, False):
            await asyncio.to_thread(
                server.deploy, "web", f"v-{compression}", env={"BIG": big}, compression=compression
            )
            codings = await _codings_per_process(server, b"/env/BIG", big.encode())
            assert len(codings) == 2, codings  # both processes answered
            assert set(codings.values()) == ({"gzip"} if compression else {None}), compression
    finally:
        await asyncio.to_thread(server.cleanup)


async def _codings_per_process(server: TakoServer, path: bytes, body: bytes) -> dict[str, str | None]:
    """The Content-Encoding each serving process gives `path` (asked with gzip on new connections until two
    processes answered, at most 40 connections; /_tako/status first on each says which process it is)."""
    assert server.https_port
    ask = b"GET %s HTTP/1.1\r\nHost: web.tako.test\r\nAccept-Encoding: gzip\r\n\r\n"
    codings: dict[str, str | None] = {}
    for _ in range(40):
        data = await raw_exchange(
            server.https_port,
            ask % b"/_tako/status" + ask % path,
            until_closed=False,
            expect_responses=2,
            ssl_context=_insecure_tls(),
            server_hostname="web.tako.test",
        )
        status, answer = parse_responses(data)
        coding = answer.header("Content-Encoding")
        assert (decode("gzip", answer.body) if coding else answer.body) == body
        codings[json.loads(status.body)["served_by"]] = coding
        if len(codings) == 2:
            break
    return codings


def _insecure_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # tako-server's self-signed certificate for a routed host
    return context


@pytest.mark.deadline(240)
async def test_many_long_compressed_streams_hold_bounded_memory(tmp_path: Path) -> None:
    """Twelve 24 MB text responses compressed at once (four per coding), the proxy in its own process:
    its memory grows by the encoders and buffers of the streams in flight, not with the bodies."""
    block = b"".join(b"line %06d of a long text stream\n" % i for i in range(2048))  # 66 KiB
    total = 360 * len(block)  # 24 MB

    async def long_text(writer: asyncio.StreamWriter) -> None:
        writer.write(head(Content_Type="text/plain", Content_Length=str(total)))
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()

    app = ScriptedApp({"/long": long_text})
    async with app.running():
        config = {"routes": {HOST: [app.port]}, "certs_dir": str(tmp_path), "forward_http": True}
        with proxy_process(config) as (proc, ports):
            rss = psutil.Process(proc.pid)
            baseline = peak = rss.memory_info().rss

            async def fetch(client: httpx.AsyncClient, coding: str) -> int:
                nonlocal peak
                got = 0
                async with client.stream(
                    "GET", "/long", headers={"Host": HOST, "Accept-Encoding": coding}
                ) as r:
                    assert r.headers["content-encoding"] == coding
                    async for piece in r.aiter_bytes():
                        got += len(piece)
                        peak = max(peak, rss.memory_info().rss)
                return got

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['http']}", timeout=120) as client:
                sizes = await asyncio.gather(*(fetch(client, c) for c in ("zstd", "br", "gzip") * 4))
    assert sizes == [total] * 12
    growth = (peak - baseline) / 1024 / 1024
    print(f"proxy RSS {baseline / 1024 / 1024:.1f} MB, peak {peak / 1024 / 1024:.1f} MB")
    assert growth < 64, growth  # 12 streams' encoders (0.3-0.6 MB each) and buffers; the bodies are 288 MB
