"""A tiny stdlib HTTP app for runtime tests; its behaviour is chosen by environment variables.

    APP_VERSION            answered by GET / (default: TAKO_BUILD or "dev")
    BOOT_DELAY             seconds to sleep before listening
    BOOT_WHEN_EXISTS=PATH  wait (at most 120 s, then exit 6) until PATH exists before listening
    CRASH_AT_BOOT=1        print a message and exit 3 before listening
    CRASH_AT_BOOT_FROM=N   the Nth and later boots of this release dir crash like CRASH_AT_BOOT
    NEVER_HEALTHY=1        the health path answers 500
    SLOW_HEALTH_WHEN_EXISTS=PATH  the health path answers 3 s late while PATH exists (a saturated app)
    CRASH_AFTER_REQUESTS   exit 4 right after answering that many requests (health probes included)
    CRASH_AFTER_SECONDS    exit 5 that many seconds after it starts listening
    IGNORE_SIGTERM=1       ignore SIGTERM (tests the SIGKILL after the grace period)
    SPAWN_CHILD=1          start a `sleep` grandchild (tests that no orphan is left)

Paths: / (version), /slow?s=N, /env/NAME, /pid, /header/NAME (that request header),
/print?line=TEXT (prints TEXT), /_tako/status, /ws (WebSocket echo); anything else 200 with the version.
SIGTERM stops accepting and lets in-flight requests finish before exiting 0.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

VERSION = os.environ.get("APP_VERSION") or os.environ.get("TAKO_BUILD") or "dev"
HEALTH = "/_tako/status"
served = 0
inflight = 0
served_lock = threading.Lock()


def log(message: str) -> None:
    print(message, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:
        global inflight
        with served_lock:
            inflight += 1
        try:
            self._get()
        finally:
            with served_lock:
                inflight -= 1
        self._count()

    def _get(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == HEALTH:
            slow = os.environ.get("SLOW_HEALTH_WHEN_EXISTS")
            if slow and os.path.exists(slow):
                time.sleep(3)
            if os.environ.get("NEVER_HEALTHY") == "1":
                self._send(500, "not healthy\n")
            else:
                self._send(200, f"ok {VERSION}\n")
        elif path == "/slow":
            seconds = float(parse_qs(url.query).get("s", ["1"])[0])
            time.sleep(seconds)
            self._send(200, f"slow {VERSION}\n")
        elif path.startswith("/env/"):
            self._send(200, os.environ.get(path[len("/env/") :], ""))
        elif path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
        elif path == "/pid":
            self._send(200, str(os.getpid()))
        elif path.startswith("/header/"):
            self._send(200, self.headers.get(path[len("/header/") :], "(none)"))
        elif path == "/print":
            log(parse_qs(url.query).get("line", [""])[0])
            self._send(200, "printed\n")
        else:
            self._send(200, f"version={VERSION} instance={os.environ.get('TAKO_INSTANCE', '')}\n")

    def _count(self) -> None:
        global served
        limit = int(os.environ.get("CRASH_AFTER_REQUESTS", "0") or 0)
        with served_lock:
            served += 1
            if limit and served >= limit:
                log(f"crashing after {served} requests")
                os._exit(4)

    def _websocket(self) -> None:
        """A minimal RFC 6455 echo server: text/binary echoed, ping answered, close ends it."""
        key = self.headers.get("Sec-WebSocket-Key", "")
        guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1((key + guid).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        read = self.rfile.read
        while True:
            head = read(2)
            if len(head) < 2:
                return
            opcode, size = head[0] & 0x0F, head[1] & 0x7F
            if size == 126:
                size = struct.unpack("!H", read(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", read(8))[0]
            mask = read(4) if head[1] & 0x80 else b""
            data = read(size)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 8:
                self._frame(8, data[:2])
                return
            self._frame(10 if opcode == 9 else opcode, data)

    def _frame(self, opcode: int, data: bytes) -> None:
        n = len(data)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + struct.pack("!H", n)
        else:
            head = bytes([0x80 | opcode, 127]) + struct.pack("!Q", n)
        self.wfile.write(head + data)
        self.wfile.flush()


def main() -> None:
    if os.environ.get("IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # first thing: a SIGTERM at any point is ignored
    port = int(os.environ["PORT"])
    log(f"booting version {VERSION} on port {port}")
    delay = float(os.environ.get("BOOT_DELAY", "0") or 0)
    if delay:
        time.sleep(delay)
    gate = os.environ.get("BOOT_WHEN_EXISTS")
    if gate:
        # A boot the test ends when it chooses, instead of a delay it would have to guess.
        deadline = time.monotonic() + 120
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                log(f"gave up waiting for {gate}")
                sys.exit(6)
            time.sleep(0.02)
    crash_from = int(os.environ.get("CRASH_AT_BOOT_FROM", "0") or 0)
    if crash_from:
        # Count boots in the release dir (instances of one release start one after the other).
        with open(".boots", "a+") as f:
            f.write("x")
            f.seek(0)
            boots = len(f.read())
        if boots >= crash_from:
            os.environ["CRASH_AT_BOOT"] = "1"
    if os.environ.get("CRASH_AT_BOOT") == "1":
        log("boom: cannot boot (CRASH_AT_BOOT)")
        sys.exit(3)
    if os.environ.get("SPAWN_CHILD") == "1":
        subprocess.Popen(["sleep", "1000"])
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), port), Handler)

    def drain_and_exit() -> None:
        server.shutdown()
        deadline = time.monotonic() + 30
        while inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        log("stopped")
        os._exit(0)

    def on_term(signum: int, frame: object) -> None:
        log("SIGTERM: finishing in-flight requests")
        threading.Thread(target=drain_and_exit, daemon=True).start()

    if os.environ.get("IGNORE_SIGTERM") != "1":
        signal.signal(signal.SIGTERM, on_term)
    crash_after = float(os.environ.get("CRASH_AFTER_SECONDS", "0") or 0)
    if crash_after:

        def crash() -> None:
            time.sleep(crash_after)
            log(f"crashing after {crash_after} s")
            os._exit(5)

        threading.Thread(target=crash, daemon=True).start()
    log(f"listening on 127.0.0.1:{port}")
    server.serve_forever(poll_interval=0.05)
    threading.Event().wait()  # drain_and_exit ends the process


if __name__ == "__main__":
    main()
