"""The SDK's ASGI middleware: /_tako/status answered; other http, websocket and lifespan passed on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "src"))

from tako_sdk import ASGIMiddleware

Scope = dict[str, Any]


async def inner(scope: Scope, receive: Any, send: Any) -> None:
    """A plain ASGI app that echoes the path, so pass-through is visible."""
    assert scope["type"] == "http"
    body = f"inner {scope['method']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def tako_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAKO_APP", "shop")
    monkeypatch.setenv("TAKO_BUILD", "abc1234")
    monkeypatch.setenv("TAKO_INSTANCE", "3")
    monkeypatch.setenv("ENV", "production")


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test")


async def test_status_answers_with_tako_fields(tako_env: None) -> None:
    async with client(ASGIMiddleware(inner)) as c:
        r = await c.get("/_tako/status")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    data = r.json()
    import os

    assert data["app"] == "shop"
    assert data["version"] == "abc1234"
    assert data["instance"] == "3"
    assert data["env"] == "production"
    assert data["pid"] == os.getpid()
    assert isinstance(data["uptime"], float) and data["uptime"] >= 0
    assert data["status"] == "ok"


async def test_other_paths_pass_through(tako_env: None) -> None:
    async with client(ASGIMiddleware(inner)) as c:
        r1 = await c.get("/")
        r2 = await c.post("/_tako/status/extra", content=b"x")
        r3 = await c.get("/_tako/statusx")
    assert (r1.text, r2.text, r3.text) == (
        "inner GET /",
        "inner POST /_tako/status/extra",
        "inner GET /_tako/statusx",
    )


async def test_head_and_wrong_method() -> None:
    async with client(ASGIMiddleware(inner)) as c:
        head = await c.head("/_tako/status")
        post = await c.post("/_tako/status")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_unset_environment_gives_nulls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TAKO_APP", "TAKO_BUILD", "TAKO_INSTANCE", "ENV"):
        monkeypatch.delenv(name, raising=False)
    async with client(ASGIMiddleware(inner)) as c:
        data = (await c.get("/_tako/status")).json()
    assert (data["app"], data["version"], data["instance"], data["env"]) == (None, None, None, "development")


async def test_custom_path() -> None:
    async with client(ASGIMiddleware(inner, path="/healthz")) as c:
        assert (await c.get("/healthz")).json()["status"] == "ok"
        assert (await c.get("/_tako/status")).text == "inner GET /_tako/status"


async def test_websocket_and_lifespan_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        msg = await receive()
        await send({"type": "echo", "got": msg["type"]})

    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    mw = ASGIMiddleware(app)
    for scope_type, first in (("lifespan", "lifespan.startup"), ("websocket", "websocket.connect")):

        async def receive(first: str = first) -> dict[str, Any]:
            return {"type": first}

        # A websocket at the status path is not the status endpoint either.
        await mw({"type": scope_type, "path": "/_tako/status"}, receive, send)
    assert seen == ["lifespan", "websocket"]
    assert sent == [{"type": "echo", "got": "lifespan.startup"}, {"type": "echo", "got": "websocket.connect"}]
