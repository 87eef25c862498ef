"""The narrow interface between the data plane (proxy) and the rest of tako-server.

The proxy reads an immutable `Snapshot` (swapped whole by the runtime on every change) and reports
request activity through `Upstream.request_started/finished`. It never imports the app runtime, which is
what lets the data-plane workers (`[server] workers`) run it unchanged from plain-data snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tako.server.proxy.maintenance import MaintenanceAnswer
from tako.server.proxy.static_files import StaticMounts


class AppUnavailable(Exception):
    """The app cannot take this request now: answered with `status` (503) and `Retry-After`."""

    def __init__(self, reason: str, *, status: int = 503, retry_after: int | None = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class Upstream(Protocol):
    """One running instance the proxy may forward to (127.0.0.1:port)."""

    @property
    def key(self) -> str:
        """Unique and stable for the instance's lifetime: the key of its connection pool."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def error_pages(self) -> Mapping[int, bytes]:
        """Its release's own pages for tako-server's 502/504 (status -> HTML), read at deploy."""

    def request_started(self) -> None:
        """Called when a request (or a WebSocket) is sent to this instance."""

    def request_finished(self) -> None:
        """Called when that request is over without a whole response from this instance (an error
        answered by the proxy, the client gone, a tunnel closed)."""

    def request_answered(self) -> None:
        """Called instead of `request_finished` when the instance's whole response was passed on."""


class AppGate(Protocol):
    """The proxy's view of one app: pick an upstream, or wait for one (cold start)."""

    @property
    def name(self) -> str: ...

    @property
    def request_buffering(self) -> bool:
        """Whether request bodies are received whole before forwarding (false: streamed to the app)."""

    @property
    def compression(self) -> bool:
        """Whether the proxy may compress the app's responses (`[tako] compression`, on by default)."""

    @property
    def https(self) -> bool:
        """False when the app is served over plain HTTP (`[tako] https = false`): the HTTP listener proxies
        it instead of redirecting to HTTPS."""

    @property
    def maintenance(self) -> MaintenanceAnswer | None:
        """Set while the app is in maintenance: every request not `admits`-ed gets its answer. A plain
        attribute: the one test the data plane makes per request for it."""

    @property
    def error_pages(self) -> Mapping[int, bytes]:
        """The live release's own pages for tako-server's 502/503/504 (status -> HTML)."""

    @property
    def static(self) -> StaticMounts | None:
        """The live release's static mounts (`[tako] static`), served from disk; None when it has none.
        A plain attribute: the one test the data plane makes per request for it."""

    def pick(self) -> Upstream | None:
        """A healthy instance in rotation, chosen round-robin/least-busy; None if there is none now."""

    async def wait_upstream(self) -> Upstream:
        """Start an instance if needed and wait (bounded) for one; raise AppUnavailable past the bounds."""


class Router(Protocol):
    """Immutable: a route change is a new router in a new `Snapshot`. A client connection keeps what its
    snapshot's router answered for its host while that router stays the snapshot's (client.py, `_start`)."""

    def match(self, host: str, path: str) -> AppGate | None:
        """The app whose route matches (host without port, lower-case; raw path), or None."""

    def same_for_every_path(self, host: str) -> bool:
        """Whether `match(host, path)` answers the same for every path."""

    def is_routed_host(self, host: str) -> bool:
        """True if any route names this host (used for HTTP->HTTPS redirects and TLS fallback)."""


@dataclass(frozen=True)
class Snapshot:
    """Everything the data plane needs, replaced atomically on deploy/delete."""

    router: Router


class ServerServices(Protocol):
    """What the listeners ask tako-server itself: status, ACME challenges."""

    def status_document(self) -> tuple[int, bytes]:
        """HTTP status (200 if every always-on app has a healthy instance, else 503) and JSON body."""

    def acme_key_authorization(self, token: str) -> str | None:
        """Key authorization for a pending HTTP-01 token, or None."""
