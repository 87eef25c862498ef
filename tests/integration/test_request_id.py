"""X-Request-Id through a real tako-server and app: a sane id from the client is kept, anything else is
replaced by one tako-server makes; the app gets the id, the client gets it back, and tako-server's own
error answers (504 here) carry it, in the response and in tako-server's log line about it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.support.raw_http import fetch
from tests.support.server_process import TakoServer, wait_for

pytestmark = pytest.mark.integration

HOST = "web.tako.test"


@pytest.fixture
async def server() -> AsyncIterator[TakoServer]:
    srv = TakoServer()
    # A short response timeout makes a 504 out of /slow.
    srv.config.write_text(srv.config.read_text() + "\n[proxy]\nupstream_response_timeout = 1.0\n")
    try:
        await asyncio.to_thread(srv.start)
        await asyncio.to_thread(srv.deploy, "web", "v1", instances=1)
        yield srv
    finally:
        await asyncio.to_thread(srv.cleanup)


async def test_an_id_is_made_forwarded_and_returned(server: TakoServer) -> None:
    assert server.https_port
    first = await fetch(server.https_port, HOST, "/header/X-Request-Id")
    second = await fetch(server.https_port, HOST, "/header/X-Request-Id")
    assert first.status == 200 and second.status == 200
    made = first.header("X-Request-Id")
    assert made and made == first.body.decode()  # what the app got is what the client got
    assert second.header("X-Request-Id") == second.body.decode() != made
    assert len(first.headers["x-request-id"]) == 1


async def test_a_sane_id_from_the_client_is_kept(server: TakoServer) -> None:
    assert server.https_port
    mine = "0f8e2c1a-7d44-4f1b-9e0e-ab12cd34ef56"
    resp = await fetch(server.https_port, HOST, "/header/X-Request-Id", {"X-Request-Id": mine})
    assert resp.body.decode() == mine and resp.header("X-Request-Id") == mine


@pytest.mark.parametrize(
    "bad",
    ["x" * 129, "has space", "semi;colon", 'quote"d', "ütf8"],
    ids=["long", "space", "semi", "quote", "utf8"],
)
async def test_an_id_that_is_not_sane_is_replaced(server: TakoServer, bad: str) -> None:
    assert server.https_port
    resp = await fetch(server.https_port, HOST, "/header/X-Request-Id", {"X-Request-Id": bad})
    given = resp.header("X-Request-Id")
    assert given and given != bad and resp.body.decode() == given
    assert len(given) <= 128


async def test_tako_servers_own_error_answer_and_log_line_carry_the_id(server: TakoServer) -> None:
    assert server.https_port
    resp = await fetch(server.https_port, HOST, "/slow?s=5", {"X-Request-Id": "late-request-1"})
    assert resp.status == 504
    assert resp.header("X-Request-Id") == "late-request-1"
    line = wait_for(
        lambda: next((ln for ln in server.log().splitlines() if "late-request-1" in ln), None),
        what="tako-server's log line about the 504",
    )
    assert "504" in line and "app web" in line
