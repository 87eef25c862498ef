"""One small app, served by real app servers, that reports every request it parsed (framing tests).

Each request is answered with, and appended as one JSON line to the file named by `FRAMING_LOG`:
`{"method", "path", "body_len", "sha256"}` (path includes the query). Paths under `/noread` are answered
without reading the body (`body_len` -1): the case where the app server itself must skip or refuse what
the client announced. Served by:

  gunicorn (sync, gthread)   tests.support.framing_apps:wsgi_app
  uvicorn (h11, httptools)   tests.support.framing_apps:asgi_app
  the standard library       python -m tests.support.framing_apps PORT   (ThreadingHTTPServer, HTTP/1.1)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_lock = threading.Lock()


def _report(method: str, path: str, body: bytes | None) -> bytes:
    entry = {
        "method": method,
        "path": path,
        "body_len": -1 if body is None else len(body),
        "sha256": "" if body is None else hashlib.sha256(body).hexdigest(),
    }
    line = json.dumps(entry, sort_keys=True)
    with _lock, open(os.environ["FRAMING_LOG"], "a") as log:
        log.write(line + "\n")
    return line.encode()


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "") + (
        "?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else ""
    )
    body = None if path.startswith("/noread") else environ["wsgi.input"].read()
    length = environ.get("CONTENT_LENGTH")
    if body is not None and length and len(body) < int(length):
        # gunicorn hands a body cut short by the peer's close to the app as if complete: not a request.
        raise ConnectionError("request body cut short")
    data = _report(environ["REQUEST_METHOD"], path, body)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


async def asgi_app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope["path"] + ("?" + query if query else "")
    body: bytes | None = None
    if not path.startswith("/noread"):
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
    data = _report(scope["method"], path, body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        body: bytes | None = None
        if self.path.startswith("/noread"):
            # http.server would parse the unread body as the next request: a handler that skips the body
            # must close the connection.
            self.close_connection = True
        else:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = self._read_chunked()
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:  # the client went away mid-body: no request to report
                    self.close_connection = True
                    return
        data = _report(self.command, self.path, body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                return body
            body += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _any

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), _Handler).serve_forever()
