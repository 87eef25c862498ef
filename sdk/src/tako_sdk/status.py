"""The `/_tako/status` answer shared by the ASGI and WSGI middleware."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

STATUS_PATH = "/_tako/status"
_JSON = "application/json"


def status_payload(started: float, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The status document; `started` is a time.monotonic() value taken when the app was set up."""
    source = os.environ if environ is None else environ
    return {
        "status": "ok",
        "app": source.get("TAKO_APP"),
        "version": source.get("TAKO_BUILD"),
        "instance": source.get("TAKO_INSTANCE"),
        "env": source.get("ENV") or "development",
        "pid": os.getpid(),
        "uptime": round(time.monotonic() - started, 3),
    }


def status_response(method: str, started: float) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status code, headers, body) for a request to the status path; HEAD gets headers only."""
    if method not in ("GET", "HEAD"):
        body = b'{"error": "method not allowed"}'
        return (
            405,
            [("content-type", _JSON), ("allow", "GET, HEAD"), ("content-length", str(len(body)))],
            body,
        )
    body = json.dumps(status_payload(started)).encode()
    headers = [("content-type", _JSON), ("cache-control", "no-store"), ("content-length", str(len(body)))]
    return 200, headers, b"" if method == "HEAD" else body
