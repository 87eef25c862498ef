"""WSGI middleware answering `/_tako/status`; every other request passes through untouched."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from tako_sdk.status import STATUS_PATH, status_response

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_REASONS = {200: "200 OK", 405: "405 Method Not Allowed"}


class WSGIMiddleware:
    """Wrap a WSGI app: `app.wsgi_app = WSGIMiddleware(app.wsgi_app)` (Flask) or around Django's app."""

    def __init__(self, app: WSGIApp, path: str = STATUS_PATH) -> None:
        self.app = app
        self.path = path
        self.started = time.monotonic()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path:
            return self.app(environ, start_response)
        code, headers, body = status_response(environ.get("REQUEST_METHOD", "GET"), self.started)
        start_response(_REASONS[code], headers)
        return [body]
