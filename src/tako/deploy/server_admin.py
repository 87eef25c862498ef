"""Day-2 operations on one server's tako-server: inspect, restart (a hand-over), reload every app."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from tako.errors import CommandFailed, ServerError, ServerTimeout, TakoError
from tako.protocol import List, Reload
from tako.remote.executor import Executor, sh

SERVICE_SCRIPT = "tako-server-service"
HANDOVER = "tako-server handover"
HANDOVER_TIMEOUT = 300.0  # the new process restores every app and starts its always-on instances first
# `tako-server handover` answers so when there is nothing to hand over from (not running; a version from
# before hand-overs): the service script restarts it instead.
_NO_HANDOVER = ("no tako-server answers", "invalid choice")

_INSPECT = """
if command -v tako-server >/dev/null 2>&1; then
  echo "installed=yes"
  echo "version=$(tako-server --version 2>/dev/null | awk '{print $NF}')"
else
  echo "installed=no"
fi
if command -v tako-server-service >/dev/null 2>&1; then
  echo "service=$(tako-server-service status 2>/dev/null | head -n1)"
elif command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  echo "service=$(systemctl is-active tako-server 2>/dev/null)"
else
  echo "service=unknown"
fi
"""


@dataclass(frozen=True)
class ServerInfo:
    installed: bool
    version: str
    service: str
    apps: list[dict[str, Any]] = field(default_factory=list)
    control_error: str | None = None


async def inspect_server(ex: Executor) -> ServerInfo:
    result = await ex.run(sh(_INSPECT), what="inspect tako-server")
    facts = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    apps: list[dict[str, Any]] = []
    error = None
    if facts.get("installed") == "yes":
        try:
            reply = await ex.control(List(), timeout=15)
            if reply.ok:
                apps = list(reply.data or [])
            else:
                error = reply.message
        except TakoError as exc:
            error = exc.message
    return ServerInfo(
        installed=facts.get("installed") == "yes",
        version=facts.get("version", ""),
        service=facts.get("service", "unknown") or "unknown",
        apps=apps,
        control_error=error,
    )


async def restart_server(ex: Executor, *, timeout: float = 60.0) -> str:
    """Restart tako-server without dropping a request: the running one hands its listeners over to a new
    process of the installed version (`tako-server handover`) and drains. Where no tako-server runs, or
    one too old to hand over, the service script restarts it. Returns the version that answers."""
    result = await ex.run(sh(HANDOVER), check=False, what="hand over", timeout=HANDOVER_TIMEOUT)
    if not result.ok:
        error = (result.stderr or result.stdout).strip()
        if not any(reason in error for reason in _NO_HANDOVER):
            message = error.removeprefix("tako-server: error: ")
            raise CommandFailed(f"{ex.address.name}: restarting tako-server failed: {message}")
        await _service_restart(ex, timeout)
    ex.forget_control()  # the old control connection ends with the old process
    return await _wait_for_hello(ex, timeout)


async def _service_restart(ex: Executor, timeout: float) -> None:
    result = await ex.run(sh(f"{SERVICE_SCRIPT} restart"), check=False, what="restart", timeout=timeout)
    if not result.ok:
        raise CommandFailed(
            f"{ex.address.name}: restarting tako-server failed: {(result.stderr or result.stdout).strip()}"
        )


async def _wait_for_hello(ex: Executor, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            hello = await ex.hello()
            if hello.ok:
                return str((hello.data or {}).get("server_version", ""))
        except TakoError:
            pass
        if time.monotonic() > deadline:
            raise ServerTimeout(f"{ex.address.name}: tako-server did not come back within {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def reload_apps(ex: Executor) -> list[str]:
    """Zero-downtime reload of every app; returns the app names reloaded."""
    reply = await ex.control(List())
    if not reply.ok:
        raise ServerError(f"{ex.address.name}: tako-server refused list: {reply.message}")
    names = sorted(str(app.get("app")) for app in reply.data or [])
    for name in names:
        result = await ex.control(Reload(app=name))
        if not result.ok:
            raise ServerError(f"{ex.address.name}: reload of {name} failed: {result.message}")
    return names
