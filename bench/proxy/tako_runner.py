"""tako's data plane for the benchmark: `ProxyServer` in N processes (SO_REUSEPORT) with a static route.

    python bench/proxy/tako_runner.py --http-port P --https-port PS --upstream UP --certs DIR [--workers N]

Every host routes to 127.0.0.1:UP. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop
from static_route import Services, snapshot  # bench/proxy, next to this script

from tako.config.server import ProxySettings
from tako.server.gc_tuning import freeze_startup_objects
from tako.server.proxy import ProxyServer
from tako.server.proxy.backend import Snapshot
from tako.server.tls.certstore import CertStore


async def serve(args: argparse.Namespace, routes: Snapshot) -> None:
    """`ProxyServer` with `routes` on the ports of `args` (HTTP forwarding too) until SIGTERM/SIGINT."""
    certs = CertStore(Path(args.certs), lambda host: True)
    server = ProxyServer(ProxySettings(), Services(), certs, routes, reuse_port=True)
    await server.start_http("127.0.0.1", args.http_port, forward=True)  # proxy, not redirect
    await server.start_https("127.0.0.1", args.https_port)
    freeze_startup_objects()  # as tako-server and its workers do once they serve
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(2)


def serve_in_processes(serve: Callable[[], Coroutine[Any, Any, None]], workers: int) -> None:
    """Run `serve()` under uvloop in `workers` processes (this one and forked children), until signalled."""
    children = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve())
            os._exit(0)
        children.append(pid)
    try:
        uvloop.run(serve())
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--https-port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--certs", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    serve_in_processes(lambda: serve(args, snapshot(args.upstream)), args.workers)


if __name__ == "__main__":
    main()
