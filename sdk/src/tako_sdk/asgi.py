"""ASGI middleware answering `/_tako/status`; all other traffic (websocket, lifespan too) passes through."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tako_sdk.status import STATUS_PATH, status_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGIMiddleware:
    """Wrap an ASGI app: `app = ASGIMiddleware(app)`, or Starlette's `app.add_middleware(ASGIMiddleware)`."""

    def __init__(self, app: ASGIApp, path: str = STATUS_PATH) -> None:
        self.app = app
        self.path = path
        self.started = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        code, headers, body = status_response(scope.get("method", "GET"), self.started)
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})
