"""Microbenchmark of a small static file's answer, in one process and in memory.

    .venv/bin/python bench/static/answer_cost.py [--requests N] [--repeat R] [--unchecked]

A real `ProxyServer` whose one route has a `[tako] static` mount (a 1 KiB file in a temporary directory)
drives a `ClientConnection` (HTTPS listener) over a fake transport that only records what is written (the
one of bench/proxy/hotpath.py): no sockets, no TLS, no event loop iterations. Each request is
`GET /static/small.css HTTP/1.1` with only a Host header, fed to the client protocol's `data_received`,
all on one keep-alive connection. Prints microseconds per request, the best of R repetitions; after every
batch the bytes written to the client are checked (untimed) so that a broken path fails loudly. Under
callgrind, use --unchecked and divide the instructions by the requests.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from hotpath import FakeTransport  # bench/proxy: records writes, no socket
from static_route import Services, StaticGate, StaticRouter, StaticUpstream

from tako.config.server import ProxySettings
from tako.server.proxy import ProxyServer, compiled
from tako.server.proxy.backend import Snapshot
from tako.server.proxy.client import ClientConnection
from tako.server.proxy.static_files import StaticMounts
from tako.server.tls.certstore import CertStore

BATCH = 100  # requests between checks of what was written (the checks are not timed)
SIZE = 1024
REQUEST = b"GET /static/small.css HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n"


def _check(got: bytes, body: bytes) -> None:
    """Every answer of the batch is a 200 with the file's bytes (the Date and request id vary)."""
    answers = got.split(b"HTTP/1.1 ")[1:]
    if len(answers) != BATCH or not all(a.startswith(b"200 OK\r\n") and a.endswith(body) for a in answers):
        sys.exit(f"static answer_cost: unexpected answers: {got[:400]!r}")


async def _run(requests: int, repeat: int, checked: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) / "public"
        files.mkdir()
        body = (b"/* a small stylesheet */\n" * (SIZE // 25 + 1))[:SIZE]
        (files / "small.css").write_bytes(body)
        gate = StaticGate(StaticUpstream(8000))
        gate.static = StaticMounts({"/static": str(files)})
        certs = CertStore(Path(tmp), lambda host: True)
        server = ProxyServer(ProxySettings(), Services(), certs, Snapshot(router=StaticRouter(gate)))
        client = ClientConnection(server, True, True)
        transport = FakeTransport(("127.0.0.1", 50000))
        client.connection_made(transport)
        rounds = max(1, requests // BATCH)
        _timed(client, transport, body, rounds, False)  # warm-up, not counted
        results = [
            _timed(client, transport, body, rounds, checked) / (rounds * BATCH) / 1000 for _ in range(repeat)
        ]
        client.connection_lost(None)
        return results


def _timed(
    client: ClientConnection, transport: FakeTransport, body: bytes, rounds: int, checked: bool
) -> int:
    """Nanoseconds `rounds` batches of requests took; what each batch wrote is checked untimed (and freed, as
    a real transport would: the timed loop never runs on ever-growing fresh memory)."""
    gc.collect()
    feed, clock, batch, elapsed = client.data_received, time.perf_counter_ns, range(BATCH), 0
    for _ in range(rounds):
        start = clock()
        for _ in batch:
            feed(REQUEST)
        elapsed += clock() - start
        written = transport.take()
        if checked:
            _check(written, body)
        if transport.closing:
            sys.exit("static answer_cost: the connection was closed")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20000, help="requests per repetition")
    parser.add_argument("--repeat", type=int, default=9, help="timed repetitions (best one is reported)")
    parser.add_argument("--unchecked", action="store_true", help="skip the byte checks (for callgrind)")
    args = parser.parse_args()
    results = uvloop.run(_run(args.requests, args.repeat, not args.unchecked))
    best, median = min(results), sorted(results)[len(results) // 2]
    print(
        f"static answer_cost: {best:.2f} us/request best of {len(results)} x {args.requests} "
        f"(median {median:.2f}; Python {sys.version.split()[0]}, modules {compiled.mode()})"
    )


if __name__ == "__main__":
    main()
