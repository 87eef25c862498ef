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

from tako.config.server import ProxySettings
from tako.routing import RouteTable, parse_route
from tako.server.proxy import ProxyServer
from tako.server.proxy.backend import AppGate, Snapshot, Upstream
from tako.server.tls.certstore import CertStore


class _Upstream:
    key = "bench"
    host = "127.0.0.1"

    def __init__(self, port: int) -> None:
        self.port = port

    def request_started(self) -> None:
        pass

    def request_finished(self) -> None:
        pass


class _Gate:
    name = "bench"

    def __init__(self, upstream: _Upstream) -> None:
        self.upstream = upstream

    def pick(self) -> Upstream | None:
        return self.upstream

    async def wait_upstream(self) -> Upstream:
        return self.upstream


class _Router:
    def __init__(self, gate: AppGate) -> None:
        self.table: RouteTable[AppGate] = RouteTable([(parse_route("127.0.0.1"), gate)])
        self.gate = gate

    def match(self, host: str, path: str) -> AppGate | None:
        return self.gate

    def is_routed_host(self, host: str) -> bool:
        return True


class _Services:
    def status_document(self) -> tuple[int, bytes]:
        return 200, b'{"apps": []}'

    def acme_key_authorization(self, token: str) -> str | None:
        return None


async def _serve(args: argparse.Namespace) -> None:
    gate = _Gate(_Upstream(args.upstream))
    certs = CertStore(Path(args.certs), lambda host: True)
    server = ProxyServer(ProxySettings(), _Services(), certs, Snapshot(router=_Router(gate)), reuse_port=True)
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
