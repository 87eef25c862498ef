"""One frozen dataclass per control command (DESIGN §5), and the reply envelope.

Requests are `{"command": <name>, ...fields}`; replies are `{"status": "ok", "data": ...}` or
`{"status": "error", "message": ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

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


Request = Hello | Deploy | Status | List | Routes | Stop | Delete | Reload

REQUEST_TYPES: dict[str, type[Request]] = {
    cls.command: cls for cls in (Hello, Deploy, Status, List, Routes, Stop, Delete, Reload)
}


@dataclass(frozen=True)
class Reply:
    """A decoded reply: `ok` with `data`, or not ok with `message`."""

    ok: bool
    data: Any = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
