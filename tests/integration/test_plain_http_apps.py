"""Apps served over plain HTTP (`[tako] https = false`) by a real tako-server: its HTTP listener proxies
them like the HTTPS listener does, in every serving process, while other apps' hosts are still redirected
to HTTPS, and no certificate is asked for their hosts."""

from __future__ import annotations

import asyncio
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from tests.support.proxy_harness import RawResponse, parse_responses, raw_exchange
from tests.support.server_process import TakoServer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.uvloop]

PLAIN = "plain.tako.test"
SECURE = "secure.tako.test"
BIG = "tako " * 400  # a 2,000-byte text/plain answer of the test app (/env/BIG): worth compressing


@pytest.mark.deadline(180)
async def test_plain_http_app_is_proxied_by_every_process_while_others_redirect(tmp_path: Path) -> None:
    server = TakoServer(app_settings={"healthy_timeout": 3.0})
    server.config.write_text(server.config.read_text() + "\n[server]\nworkers = 2\n")
    try:
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(
            server.deploy, "plain", "v1", routes=(PLAIN, f"{SECURE}/open/*"), https=False, env={"BIG": BIG}
        )
        await asyncio.to_thread(server.deploy, "secure", "v1", routes=(SECURE,))
        assert server.http_port
        served_by = await _proto_per_process(server.http_port)
        assert served_by == {"http"}, served_by  # both processes proxied it, X-Forwarded-Proto http

        post = b"POST /x?y=1 HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n\r\n" % SECURE.encode()
        (redirect,) = parse_responses(
            await raw_exchange(server.http_port, post, until_closed=False, expect_responses=1)
        )
        assert (redirect.status, redirect.header("Location")) == (
            308,
            f"https://{SECURE}:{server.https_port}/x?y=1",
        )

        # A host shared by both apps: each route follows its own app's setting.
        shared = await _get(server.http_port, SECURE, "/open/x")
        assert shared.status == 200 and shared.body.startswith(b"version=v1 "), shared

        lines = wait_for(lambda: _access_lines(server), what="the plain-HTTP app's access lines")
        assert {line["tls"] for line in lines} == {False} and lines[0]["host"] == PLAIN

        big = await _get(server.http_port, PLAIN, "/env/BIG", b"Accept-Encoding: gzip\r\n")
        assert big.header("Content-Encoding") == "gzip" and zlib.decompress(big.body, 31) == BIG.encode()
        await asyncio.to_thread(server.call, "maintenance", app="plain", on=True)
        assert (await _get(server.http_port, PLAIN, "/")).status == 503  # the app's maintenance answer
        await asyncio.to_thread(server.call, "maintenance", app="plain", on=False)

        status = json.loads((await _get(server.http_port, PLAIN, "/_tako/status")).body)
        assert SECURE in status["certificates"]  # an HTTPS app's host is tracked for a certificate
        assert PLAIN not in status["certificates"]  # the plain-HTTP app's is not
        assert not (server.data_dir / "certs" / PLAIN).exists()
    finally:
        await asyncio.to_thread(server.cleanup)


def _access_lines(server: TakoServer) -> list[dict[str, Any]]:
    path = server.data_dir / "apps" / "plain" / "shared" / "logs" / "access.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _get(port: int, host: str, path: str, extra: bytes = b"") -> RawResponse:
    ask = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host.encode(), extra)
    (answer,) = parse_responses(await raw_exchange(port, ask, until_closed=False, expect_responses=1))
    return answer


async def _proto_per_process(port: int) -> set[str]:
    """The X-Forwarded-Proto the app saw through each serving process (new connections until two
    processes answered, at most 40; /_tako/status first on each says which process it is)."""
    ask = b"GET %s HTTP/1.1\r\nHost: " + PLAIN.encode() + b"\r\n\r\n"
    protos: dict[str, str] = {}
    for _ in range(40):
        data = await raw_exchange(
            port,
            ask % b"/_tako/status" + ask % b"/header/X-Forwarded-Proto",
            until_closed=False,
            expect_responses=2,
        )
        status, answer = parse_responses(data)
        assert answer.status == 200, answer
        assert answer.header("X-Request-Id")  # made by the proxy, as on HTTPS
        protos[json.loads(status.body)["served_by"]] = answer.body.decode()
        if len(protos) == 2:
            break
    assert len(protos) == 2, protos
    return set(protos.values())
