"""A fixed route for the proxy benchmarks: every host and path goes to one upstream at 127.0.0.1:PORT.

`snapshot(port)` and `Services` stand in for tako-server's runtime (used by tako_runner.py and hotpath.py).
"""

from __future__ import annotations

from tako.server.proxy.backend import AppGate, Snapshot, Upstream
from tako.server.proxy.counters import InFlight, Rotation


class StaticUpstream(InFlight):
    """As a data-plane worker's `WorkerUpstream`: the compiled in-flight counts, an address."""

    host = "127.0.0.1"
    error_pages: dict[int, bytes] = {}

    def __init__(self, port: int) -> None:
        super().__init__()
        self.key = "bench"  # InFlight's field
        self.port = port


class StaticGate(Rotation):
    """As an app's gate in tako-server: `Rotation` picks its one upstream."""

    name = "bench"
    request_buffering = True  # (`maintenance` and `static` are Rotation's: None, no maintenance or mounts)
    compression = True  # [tako] compression, on by default
    error_pages: dict[int, bytes] = {}

    def __init__(self, upstream: StaticUpstream) -> None:
        super().__init__()
        self.upstream = upstream
        self.rotation = (upstream,)

    async def wait_upstream(self) -> Upstream:
        return self.upstream


class StaticRouter:
    def __init__(self, gate: AppGate) -> None:
        self.gate = gate

    def match(self, host: str, path: str) -> AppGate | None:
        return self.gate

    def same_for_every_path(self, host: str) -> bool:
        return True

    def is_routed_host(self, host: str) -> bool:
        return True


class Services:
    def status_document(self) -> tuple[int, bytes]:
        return 200, b'{"apps": []}'

    def acme_key_authorization(self, token: str) -> str | None:
        return None


def snapshot(port: int) -> Snapshot:
    """A routing snapshot sending everything to 127.0.0.1:`port`."""
    return Snapshot(router=StaticRouter(StaticGate(StaticUpstream(port))))
