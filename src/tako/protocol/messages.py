"""One frozen dataclass per control command (docs/server.md, "Control socket"), and the reply envelope.

Requests are `{"command": <name>, ...fields}`; replies are `{"status": "ok", "data": ...}` or
`{"status": "error", "message": ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from tako.errors import ProtocolError
from tako.protocol.client_networks import ALLOW_HINT, parse_networks
from tako.protocol.limits import MAX_IDLE_TIMEOUT, MAX_INSTANCES

PROTOCOL_VERSION = 1

# Machine-readable `code` of an error reply, for the cases a client acts on (never match message text).
ERROR_UNKNOWN_APP = "unknown-app"


@dataclass(frozen=True)
class Hello:
    """Sent first: the server answers with its version, protocol version and capabilities."""

    command: ClassVar[str] = "hello"
    protocol: int = PROTOCOL_VERSION
    client: str = ""


@dataclass(frozen=True)
class Deploy:
    """Deploy (or roll) an app to the release at `path` (a directory holding app.json and .env)."""

    command: ClassVar[str] = "deploy"
    app: str
    version: str
    path: str
    routes: tuple[str, ...]
    instances: int = 0
    idle_timeout: int = 300
    # [tako] maintenance_allow of the deploying tako.toml; None (a rollback) keeps the app's current list.
    maintenance_allow: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Checked where the message is made, so a client's mistake is an error reply before the server
        # starts anything (tako.toml is held to the same limits at load).
        _check_range("instances", self.instances, MAX_INSTANCES, "instances per app per server")
        _check_range("idle_timeout", self.idle_timeout, MAX_IDLE_TIMEOUT, "seconds (one week)")
        _check_allow(self.maintenance_allow)


# Characters of a maintenance message: a sentence or two for the default page (an app with more to say
# ships its own maintenance.html).
MAX_MAINTENANCE_MESSAGE = 2000


@dataclass(frozen=True)
class Maintenance:
    """Turn maintenance mode of an app on or off: while on, its routes answer 503 with Retry-After and the
    live release's `maintenance.html` (or a small default page with `message`), except to the clients
    `allow` lets through (None keeps the app's current list)."""

    command: ClassVar[str] = "maintenance"
    app: str
    on: bool
    message: str = ""
    allow: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.message) > MAX_MAINTENANCE_MESSAGE:
            raise ProtocolError(
                f"the maintenance message is {len(self.message)} characters; at most "
                f"{MAX_MAINTENANCE_MESSAGE} are allowed",
                hint="say more in a maintenance.html page in the app instead",
            )
        _check_allow(self.allow)


def _check_allow(allow: tuple[str, ...] | None) -> None:
    if allow is None:
        return
    try:
        parse_networks(allow)
    except ValueError as exc:
        raise ProtocolError(f"field 'maintenance_allow': {exc}", hint=ALLOW_HINT) from None


def _check_range(name: str, value: int, maximum: int, unit: str) -> None:
    if value < 0:
        raise ProtocolError(f"field {name!r} must be at least 0, got {value}")
    if value > maximum:
        raise ProtocolError(
            f"field {name!r} must be at most {maximum}, got {value}", hint=f"the limit is {maximum} {unit}"
        )


@dataclass(frozen=True)
class Status:
    """State of one app: version, state, instances, last error, certificates."""

    command: ClassVar[str] = "status"
    app: str


@dataclass(frozen=True)
class List:
    """Every app with its summary state."""

    command: ClassVar[str] = "list"


@dataclass(frozen=True)
class Routes:
    """Every app's routes, for the CLI's conflict check."""

    command: ClassVar[str] = "routes"


@dataclass(frozen=True)
class Stop:
    """Stop every instance of an app; it stays registered (state `stopped`) until deployed or deleted."""

    command: ClassVar[str] = "stop"
    app: str


@dataclass(frozen=True)
class Delete:
    """Stop an app and forget it: routes, state and registration. Files are removed by the CLI."""

    command: ClassVar[str] = "delete"
    app: str


@dataclass(frozen=True)
class Reload:
    """Rolling restart of an app's instances, re-reading the release `.env`, with zero downtime."""

    command: ClassVar[str] = "reload"
    app: str


Request = Hello | Deploy | Status | List | Routes | Stop | Delete | Reload | Maintenance

REQUEST_TYPES: dict[str, type[Request]] = {
    cls.command: cls for cls in (Hello, Deploy, Status, List, Routes, Stop, Delete, Reload, Maintenance)
}


@dataclass(frozen=True)
class Reply:
    """A decoded reply: `ok` with `data`, or not ok with `message`."""

    ok: bool
    data: Any = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
