"""Bodies streamed both ways (Content-Length and chunked) with bounded memory; HEAD, 204, 304, 1xx, Expect."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import trustme
from tests.support.proxy_harness import https_get, one_app_proxy, raw_exchange
from tests.support.proxy_process import proxy_process
from tests.support.upstreams import HttpUpstream

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

MB = 1024 * 1024
BIG = 200 * MB
RSS_GROWTH_LIMIT = 64 * MB


class _RssSampler:
    """Samples a process's RSS in a thread until stopped; keeps the maximum."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def _pattern(total: int, block: int = 256 * 1024) -> AsyncIterator[bytes]:
    data = bytes(range(256)) * (block // 256)
    sent = 0
    while sent < total:
        piece = data[: min(block, total - sent)]
        sent += len(piece)
        yield piece


def _pattern_sha(total: int, block: int = 256 * 1024) -> str:
    data = bytes(range(256)) * (block // 256)
    digest = hashlib.sha256()
    sent = 0
    while sent < total:
        piece = data[: min(block, total - sent)]
        digest.update(piece)
        sent += len(piece)
    return digest.hexdigest()


@pytest.mark.deadline(300)
async def test_200mb_upload_and_download_with_bounded_memory(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "certs" / "big.tako.test").mkdir(parents=True)
    cert = ca.issue_cert("big.tako.test")
    cert.private_key_pem.write_to_path(str(tmp_path / "certs" / "big.tako.test" / "privkey.pem"))
    (tmp_path / "certs" / "big.tako.test" / "fullchain.pem").write_bytes(
        b"".join(b.bytes() for b in cert.cert_chain_pems)
    )

    up = await HttpUpstream().start()
    config = {"routes": {"big.tako.test": [up.port]}, "certs_dir": str(tmp_path / "certs")}
    try:
        with proxy_process(config) as (proc, ports):
            ctx = httpx.create_ssl_context()
            ca.configure_trust(ctx)
            async with httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{ports['https']}", verify=ctx, timeout=120
            ) as client:
                await https_get(client, "big.tako.test", "/warm-up")
                with _RssSampler(proc.pid) as rss:
                    # Upload, chunked, to an app that reads slowly: the proxy must stop reading.
                    r = await client.post(
                        "/sink?slow=1",
                        content=_pattern(BIG),
                        headers={"Host": "big.tako.test"},
                        extensions={"sni_hostname": "big.tako.test"},
                    )
                    assert r.status_code == 200
                    assert r.json() == {"received": BIG, "sha256": _pattern_sha(BIG)}
                    # Download with Content-Length to a client that reads slowly.
                    received = 0
                    async with client.stream(
                        "GET",
                        f"/bytes/{BIG}",
                        headers={"Host": "big.tako.test"},
                        extensions={"sni_hostname": "big.tako.test"},
                    ) as resp:
                        assert resp.headers["content-length"] == str(BIG)
                        async for chunk in resp.aiter_raw():
                            received += len(chunk)
                            if received % (4 * MB) < len(chunk):
                                await asyncio.sleep(0.005)  # throttle the client, not a wait
                    assert received == BIG
                print(f"proxy RSS baseline {rss.baseline / MB:.1f} MB, peak {rss.peak / MB:.1f} MB")
                assert rss.peak - rss.baseline < RSS_GROWTH_LIMIT, (rss.baseline, rss.peak)
    finally:
        await up.stop()


async def test_chunked_both_ways_and_content_length_upload(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _):
        async with p.https() as client:
            r = await https_get(client, "a.tako.test", "/chunked/3000000")
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.content == b"x" * 3000000
            r = await https_get(client, "a.tako.test", "/close/100000")
            assert r.headers["transfer-encoding"] == "chunked"  # re-framed for keep-alive
            assert len(r.content) == 100000
            body = b"z" * 5_000_000
            for content in (body, _pattern(5_000_000)):
                r = await client.post(
                    "/sink",
                    content=content,
                    headers={"Host": "a.tako.test"},
                    extensions={"sni_hostname": "a.tako.test"},
                )
                assert r.json()["received"] == 5_000_000
            assert r.json()["sha256"] == _pattern_sha(5_000_000)
        # HTTP/1.0 client: no chunked encoding; the body is close-delimited.
        data = await p.exchange(b"GET /chunked/1000 HTTP/1.0\r\nHost: a.tako.test\r\n\r\n")
        head, body10 = data.split(b"\r\n\r\n", 1)
        assert b"chunked" not in head.lower() and body10 == b"x" * 1000


async def test_head_204_304_interim_and_expect_continue(tmp_path: Path) -> None:
    async with one_app_proxy(tmp_path) as (p, _):
        ctx = p.client_context()
        requests = (
            b"HEAD /bytes/12345 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
            b"HEAD /chunked/100 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
            b"GET /status/204 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
            b"GET /status/304 HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
            b"GET /interim HTTP/1.1\r\nHost: a.tako.test\r\n\r\n"
            b"GET /bytes/3 HTTP/1.1\r\nHost: a.tako.test\r\nConnection: close\r\n\r\n"
        )
        data = await raw_exchange(p.https_port, requests, ssl_context=ctx, server_hostname="a.tako.test")
        # Parse by hand: HEAD responses carry Content-Length but no body.
        parts = data.split(b"HTTP/1.1 ")
        statuses = [int(part[:3]) for part in parts if part]
        assert statuses == [200, 200, 204, 304, 103, 200, 200]
        assert b"Content-Length: 12345" in parts[1]
        assert parts[1].endswith(b"\r\n\r\n") and parts[2].endswith(b"\r\n\r\n")
        assert parts[-1].endswith(b"\r\n\r\nxxx")
        assert b"Link: </a.css>" in parts[5]
        # Expect: 100-continue: the app's 100 is relayed before the body is sent.
        reader_writer = await asyncio.open_connection(
            "127.0.0.1", p.https_port, ssl=ctx, server_hostname="a.tako.test"
        )
        reader, writer = reader_writer
        writer.write(
            b"POST /sink HTTP/1.1\r\nHost: a.tako.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        line = await reader.readuntil(b"\r\n\r\n")
        assert line.startswith(b"HTTP/1.1 100")
        writer.write(b"abcd")
        rest = await reader.readuntil(b"}")
        assert b'"received": 4' in rest
        writer.close()
