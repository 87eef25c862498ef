"""A stdlib test app for secrets e2e tests: reports sha256 digests of env vars, never their values.

    GET /              JSON {"digests": {NAME: sha256-hex or null}, "build": ..., "pid": ...} for API_KEY
                       and every name in DIGEST_NAMES (comma-separated) and in ?names=A,B
    GET /_tako/status  200 "ok" (health)
    CRASH_AT_BOOT      when set and non-empty: print a line and exit 3 before listening

It prints nothing about the variables: its log must stay free of secret values.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def digest(name: str) -> str | None:
    value = os.environ.get(name)
    # surrogateescape: the exact bytes the process was given, whatever the locale.
    return None if value is None else hashlib.sha256(os.fsencode(value)).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/_tako/status":
            body = b"ok\n"
            content_type = "text/plain"
        else:
            names = ["API_KEY"]
            names += [n for n in os.environ.get("DIGEST_NAMES", "").split(",") if n]
            for chunk in parse_qs(url.query).get("names", []):
                names += [n for n in chunk.split(",") if n]
            report = {
                "digests": {name: digest(name) for name in names},
                "build": os.environ.get("TAKO_BUILD", ""),
                "pid": os.getpid(),
            }
            body = (json.dumps(report) + "\n").encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    if os.environ.get("CRASH_AT_BOOT"):
        print("secrets app: CRASH_AT_BOOT is set, exiting", flush=True)
        raise SystemExit(3)
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"secrets app listening on port {os.environ['PORT']}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
