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
from pathlib import Path

import uvloop
from static_route import Services, snapshot  # bench/proxy, next to this script

from tako.config.server import ProxySettings
from tako.server.proxy import ProxyServer
from tako.server.tls.certstore import CertStore


async def _serve(args: argparse.Namespace) -> None:
    certs = CertStore(Path(args.certs), lambda host: True)
    server = ProxyServer(ProxySettings(), Services(), certs, snapshot(args.upstream), reuse_port=True)
    await server.start_http("127.0.0.1", args.http_port, forward=True)  # proxy, not redirect
    await server.start_https("127.0.0.1", args.https_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--https-port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--certs", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            uvloop.run(_serve(args))
            os._exit(0)
        children.append(pid)
    try:
        uvloop.run(_serve(args))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    sys.exit(0)


if __name__ == "__main__":
    main()
