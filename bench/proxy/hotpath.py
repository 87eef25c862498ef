"""Microbenchmark of the proxy's per-request hot path, in one process and in memory.

    .venv/bin/python bench/proxy/hotpath.py [--requests N] [--repeat R]

A real `ProxyServer` with one static route drives a `ClientConnection` (HTTPS listener) and one pooled
`UpstreamConnection` over fake transports that only record what is written: no sockets, no TLS, no event
loop iterations. Each request is `GET / HTTP/1.1` with only a Host header, fed to the client protocol's
`data_received`; the instance's keep-alive answer (200, a few headers, a 75-byte body) is fed to the
upstream protocol's `data_received`. All N requests use the same keep-alive connections.

Prints microseconds per request: the best of R repetitions (the least disturbed by other processes).
After every batch of requests the bytes written to the instance and to the client are compared with the
expected requests and responses (untimed), so a broken path fails loudly instead of measuring the wrong
thing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from static_route import Services, StaticUpstream, snapshot  # bench/proxy, next to this script

from tako.config.server import ProxySettings
from tako.server.observe.access_log import AccessLog
from tako.server.proxy import ProxyServer, compiled
from tako.server.proxy.client import ClientConnection
from tako.server.proxy.upstream import UpstreamConnection
from tako.server.tls.certstore import CertStore

UPSTREAM_PORT = 8000  # never connected to: the upstream connection is in memory
BATCH = 100  # requests between checks of what was written (the checks are not timed)

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n"

BODY = b"<html><head><title>Tako</title></head><body>A benchmark page</body></html>\n"
assert len(BODY) == 75
UPSTREAM_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bench\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 75\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + BODY
)

# What the instance must receive and what the client must receive for each request.
EXPECTED_UPSTREAM_REQUEST = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8443\r\n"
    b"X-Forwarded-For: 127.0.0.1\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: 127.0.0.1:8443\r\n"
    b"\r\n"
)
EXPECTED_CLIENT_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bench\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 75\r\n"
    b"\r\n" + BODY
)


class FakeTransport(asyncio.Transport):
    """Records writes; flow control and closing only set flags."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.writes: list[bytes] = []
        self.closing = False
        self.reading = True
        # Real transports write in C: bind the list's own methods so the fake adds no Python frames.
        self.write = self.writes.append  # type: ignore[method-assign]
        self.writelines = self.writes.extend  # type: ignore[method-assign]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write_eof(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def take(self) -> bytes:
        data = b"".join(self.writes)
        self.writes.clear()
        return data


# Every request and response carries an X-Request-Id the proxy made (one per request): checked for being
# there, then left out of the comparison.
_REQUEST_ID = re.compile(rb"X-Request-Id: [0-9a-f]{16}-[0-9a-f]+\r\n")


def _check(what: str, got: bytes, expected: bytes) -> None:
    got, ids = _REQUEST_ID.subn(b"", got)
    if ids != BATCH:
        sys.exit(f"hotpath: {ids} request ids {what}, expected {BATCH}")
    if got != expected:
        i = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
        i = min(len(got), len(expected)) if i is None else i
        sys.exit(
            f"hotpath: unexpected bytes {what} (lengths {len(got)} vs {len(expected)}, first difference at "
            f"{i}: {got[max(0, i - 40) : i + 40]!r} vs {expected[max(0, i - 40) : i + 40]!r})"
        )


async def _run(requests: int, repeat: int, access_log: bool, counting: bool, checked: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as certs_dir:
        certs = CertStore(Path(certs_dir), lambda host: True)
        routes = snapshot(UPSTREAM_PORT)
        # The access log's lines are formatted (its flush runs on the loop as in tako-server) but not written.
        access = AccessLog(asyncio.get_running_loop(), lambda batch: None) if access_log else None
        server = ProxyServer(
            ProxySettings(), Services(), certs, routes, access_log=access, count_requests=counting
        )
        client = ClientConnection(server, True, True)
        client_transport = FakeTransport(("127.0.0.1", 50000))
        client.connection_made(client_transport)
        pool = server.pool_for(StaticUpstream(UPSTREAM_PORT))
        uconn = UpstreamConnection(pool)
        upstream_transport = FakeTransport(("127.0.0.1", UPSTREAM_PORT))
        uconn.connection_made(upstream_transport)
        pool.release(uconn)

        feed_request = client.data_received
        feed_response = uconn.data_received
        request = REQUEST
        response = UPSTREAM_RESPONSE
        sent = EXPECTED_UPSTREAM_REQUEST * BATCH
        answered = EXPECTED_CLIENT_RESPONSE * BATCH
        batch = range(BATCH)
        clock = time.perf_counter_ns
        results = []
        for rep in range(repeat + 1):  # the first round warms up and is not counted
            gc.collect()
            elapsed = 0
            for _ in range(max(1, requests // BATCH)):
                start = clock()
                for _ in batch:
                    feed_request(request)
                    feed_response(response)
                elapsed += clock() - start
                # Checked (untimed) after every batch, which also frees what was written, as a real
                # transport would: the timed loop never runs on ever-growing fresh memory.
                sent_now, answered_now = upstream_transport.take(), client_transport.take()
                if checked:
                    _check("sent to the instance", sent_now, sent)
                    _check("sent to the client", answered_now, answered)
                if client_transport.closing or upstream_transport.closing or pool.idle != [uconn]:
                    sys.exit("hotpath: a connection was closed or not returned to the pool")
            if rep:
                results.append(elapsed / (max(1, requests // BATCH) * BATCH) / 1000)
        client.connection_lost(None)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20000, help="requests per repetition")
    parser.add_argument("--repeat", type=int, default=9, help="timed repetitions (best one is reported)")
    parser.add_argument("--access-log", action="store_true", help="queue an access log line per request")
    parser.add_argument(
        "--no-counters", action="store_true", help="[metrics] count_requests = false: requests not counted"
    )
    parser.add_argument(
        "--unchecked",
        action="store_true",
        help="skip the byte checks (untimed, but callgrind counts them: for instruction counts)",
    )
    args = parser.parse_args()
    results = uvloop.run(
        _run(args.requests, args.repeat, args.access_log, not args.no_counters, not args.unchecked)
    )
    best = min(results)
    median = sorted(results)[len(results) // 2]
    print(
        f"hotpath: {best:.2f} us/request best of {len(results)} x {args.requests} "
        f"(median {median:.2f} us/request; Python {sys.version.split()[0]}, modules {compiled.mode()}, "
        f"counters {'off' if args.no_counters else 'on'}, access log {'on' if args.access_log else 'off'})"
    )


if __name__ == "__main__":
    main()
