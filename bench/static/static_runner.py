"""tako's data plane serving static files for the benchmark: `ProxyServer` in N processes (SO_REUSEPORT)
whose only route is an app with one static mount, `/static` -> DIR (no instance: every request is a file).

    python bench/static/static_runner.py --http-port P --https-port PS --root DIR --certs DIR [--workers N]

Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from static_route import StaticRouter  # bench/proxy's stand-ins for the runtime
from tako_runner import serve, serve_in_processes

from tako.server.proxy.backend import AppUnavailable, Snapshot, Upstream
from tako.server.proxy.static_files import StaticMounts


class FilesOnly:
    """An app with a static mount and no instance: what is not a file is a 503."""

    name = "static"
    request_buffering = True
    compression = False
    maintenance = None
    error_pages: dict[int, bytes] = {}

    def __init__(self, root: str) -> None:
        self.static = StaticMounts({"/static": root})

    def pick(self) -> Upstream | None:
        return None

    async def wait_upstream(self) -> Upstream:
        raise AppUnavailable("no instance in this benchmark")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--https-port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--certs", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    routes = Snapshot(router=StaticRouter(FilesOnly(args.root)))
    serve_in_processes(lambda: serve(args, routes), args.workers)


if __name__ == "__main__":
    main()
