"""A minimal web app for Tako, using only the Python standard library.

Tako starts it with `PORT` (and `HOST=127.0.0.1`) in the environment; it answers `/` with a greeting
that names the deployed build, and `/_tako/status` for Tako's health checks.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        build = os.environ.get("TAKO_BUILD", "dev")
        if self.path == "/_tako/status":
            body = json.dumps(
                {
                    "status": "ok",
                    "app": os.environ.get("TAKO_APP", "hello"),
                    "version": build,
                    "instance": os.environ.get("TAKO_INSTANCE", ""),
                    "pid": os.getpid(),
                    "uptime": round(time.time() - STARTED, 3),
                }
            ).encode()
            content_type = "application/json"
        else:
            greeting = os.environ.get("GREETING", "Hello from Tako")
            body = f"{greeting}! build {build} (env {os.environ.get('ENV', 'development')})\n".encode()
            content_type = "text/plain; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    # SIGTERM: stop accepting, let in-flight requests finish, exit.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"hello listening on http://{host}:{port}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
