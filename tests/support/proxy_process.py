"""Run a `ProxyServer` in its own process (uvloop) so tests can measure its memory.

    python -m tests.support.proxy_process '{"routes": {"a.tako.test": [PORT, ...]}, "certs_dir": "...",
                                            "settings": {...ProxySettings fields...}}'

Optional `"nofile": N` lowers the open-file limit; `"forward_http": true` makes the plain listener
proxy. Prints one JSON line `{"http": port, "https": port}`
once listening; SIGTERM shuts it down gracefully.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.processes import stop_process
from tests.support.proxy_routes import StaticGate, StaticServices, StaticUpstream, snapshot

from tako.config.server import ProxySettings
from tako.server.proxy.backend import AppGate

REPO = Path(__file__).resolve().parents[2]


async def _main(config: dict[str, Any]) -> None:
    import contextlib
    import resource

    from tako.server.proxy import ProxyServer

    if "nofile" in config:  # a low descriptor limit, to exercise running out of them
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (config["nofile"], resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )
    from tako.server.tls.certstore import CertStore

    routes: dict[str, AppGate] = {
        route: StaticGate(route, [StaticUpstream(port) for port in ports])
        for route, ports in config["routes"].items()
    }
    settings = ProxySettings(**config.get("settings", {}))
    certs = CertStore(Path(config["certs_dir"]), lambda host: False)
    server = ProxyServer(settings, StaticServices(), certs, snapshot(routes))
    http = await server.start_http("127.0.0.1", 0, forward=config.get("forward_http", False))
    https = await server.start_https("127.0.0.1", 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"http": http, "https": https}), flush=True)
    await stop.wait()
    with contextlib.suppress(Exception):
        await server.shutdown(5)


@contextmanager
def proxy_process(config: dict[str, Any]) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """Start the runner, yield (process, ports), and always stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.proxy_process", json.dumps(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"proxy process exited early with {proc.wait(10)}")
        yield proc, json.loads(line)
    finally:
        stop_process(proc)


if __name__ == "__main__":
    import uvloop

    uvloop.run(_main(json.loads(sys.argv[1])))
