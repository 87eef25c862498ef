"""Test doubles of the proxy's runtime interface (`Router`, `AppGate`, `Upstream`, `ServerServices`).

They are built on the real routing table (`tako.routing.RouteTable`) and point at real upstream servers; the
app runtime implements the same interface for tako-server itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from tako.routing import RouteTable, parse_route
from tako.server.proxy.backend import AppGate, AppUnavailable, Snapshot, Upstream
from tako.server.proxy.maintenance import MaintenanceAnswer
from tako.server.proxy.static_files import StaticMounts


class StaticUpstream:
    def __init__(self, port: int, host: str = "127.0.0.1", key: str | None = None) -> None:
        self._port = port
        self._host = host
        self._key = key or f"{host}:{port}"
        self.in_flight = 0
        self.started = 0
        self.finished = 0
        self.answered = 0  # finished with the whole response passed on (request_answered)
        self.error_pages: dict[int, bytes] = {}

    @property
    def key(self) -> str:
        return self._key

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    def request_started(self) -> None:
        self.started += 1
        self.in_flight += 1

    def request_finished(self) -> None:
        self.finished += 1
        self.in_flight -= 1

    def request_answered(self) -> None:
        self.answered += 1
        self.request_finished()


class StaticGate:
    """Round-robin over `upstreams`; with none, `waiter` decides (cold start) or AppUnavailable is raised."""

    def __init__(
        self,
        name: str,
        upstreams: list[StaticUpstream],
        waiter: Callable[[], Awaitable[StaticUpstream]] | None = None,
        *,
        request_buffering: bool = True,
    ) -> None:
        self._name = name
        self.request_buffering = request_buffering
        self.compression = True
        self.https = True
        self.maintenance: MaintenanceAnswer | None = None
        self.error_pages: dict[int, bytes] = {}
        self.static: StaticMounts | None = None
        self.upstreams = upstreams
        self.waiter = waiter
        self._next = 0

    @property
    def name(self) -> str:
        return self._name

    def pick(self) -> Upstream | None:
        if not self.upstreams:
            return None
        self._next = (self._next + 1) % len(self.upstreams)
        return self.upstreams[self._next]

    async def wait_upstream(self) -> Upstream:
        if self.waiter is None:
            raise AppUnavailable("App is starting", retry_after=2)
        return await self.waiter()


class StaticRouter:
    def __init__(self, routes: dict[str, AppGate]) -> None:
        self.table: RouteTable[AppGate] = RouteTable((parse_route(r), g) for r, g in routes.items())

    def match(self, host: str, path: str) -> AppGate | None:
        return self.table.match(host, path)

    def same_for_every_path(self, host: str) -> bool:
        return self.table.same_for_every_path(host)

    def is_routed_host(self, host: str) -> bool:
        return self.table.is_routed_host(host)


def snapshot(routes: dict[str, AppGate]) -> Snapshot:
    return Snapshot(router=StaticRouter(routes))


class StaticServices:
    def __init__(self) -> None:
        self.status = 200
        self.document: dict[str, object] = {"apps": []}
        self.challenges: dict[str, str] = {}

    def status_document(self) -> tuple[int, bytes]:
        return self.status, json.dumps(self.document).encode()

    def acme_key_authorization(self, token: str) -> str | None:
        return self.challenges.get(token)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `predicate()` is true, polling; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)
