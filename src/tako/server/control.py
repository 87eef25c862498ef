"""The control socket: JSON lines over a unix socket (docs/server.md), one short handler per command.

Malformed or oversized lines and unknown commands get an error reply; the connection stays usable.
The socket file is created atomically with mode 0600; a stale one is replaced, a live one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tako import __version__
from tako.errors import ControlError, ProtocolError, TakoError
from tako.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    Delete,
    Deploy,
    Hello,
    List,
    Maintenance,
    Reload,
    Request,
    Routes,
    Status,
    Stop,
    decode_request,
    error_reply,
    ok_reply,
)
from tako.server.apps.registry import AppRegistry

log = logging.getLogger("tako.server.control")

CAPABILITIES = ("deploy", "status", "list", "routes", "stop", "delete", "reload", "maintenance")


class ControlServer:
    """Serves the control protocol; each request is decoded, handled by one handler, and answered."""

    def __init__(
        self,
        registry: AppRegistry,
        info: Callable[[], dict[str, Any]] = dict,
        certificates: Callable[[], dict[str, Any]] = dict,
        figures: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        self.registry = registry
        self._info = info
        self._certificates = certificates
        self._figures = figures  # an app's last minute of traffic (requests/s, error rate, p95)
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None
        self._inode: int | None = None
        self._handlers: dict[type[Any], Callable[[Any], Awaitable[Any]]] = {
            Hello: self.hello,
            Deploy: self.deploy,
            Status: self.status,
            List: self.list_apps,
            Routes: self.routes,
            Stop: self.stop,
            Delete: self.delete,
            Reload: self.reload,
            Maintenance: self.maintenance,
        }

    # -- handlers -------------------------------------------------------------------------------------
    async def hello(self, req: Hello) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "server_version": __version__,
            "capabilities": list(CAPABILITIES),
            **self._info(),
        }

    async def deploy(self, req: Deploy) -> Any:
        return await self.registry.deploy(req)

    async def status(self, req: Status) -> Any:
        result = self.registry.status(req.app)
        certs = self._certificates()
        routes = result.get("routes")
        hosts = {str(route).split("/", 1)[0] for route in routes} if isinstance(routes, list) else set()
        traffic = self._figures(req.app) if self._figures is not None else None
        certificates = {h: certs[h] for h in sorted(hosts) if h in certs}
        return {**result, "certificates": certificates, "traffic": traffic}

    async def list_apps(self, req: List) -> Any:
        return self.registry.list_apps()

    async def routes(self, req: Routes) -> Any:
        return self.registry.routes()

    async def stop(self, req: Stop) -> Any:
        return await self.registry.stop(req.app)

    async def delete(self, req: Delete) -> Any:
        return await self.registry.delete(req.app)

    async def reload(self, req: Reload) -> Any:
        return await self.registry.reload(req.app)

    async def maintenance(self, req: Maintenance) -> Any:
        return await self.registry.maintenance(req)

    # -- protocol -------------------------------------------------------------------------------------
    async def answer(self, line: bytes) -> bytes:
        """The reply line for one request line (never raises for a client's mistake)."""
        try:
            request: Request = decode_request(line)
            result = await self._handlers[type(request)](request)
        except TakoError as exc:
            extra = {"hint": exc.hint} if exc.hint else {}
            if exc.code:
                extra["code"] = exc.code
            return error_reply(exc.message, **extra)
        except Exception as exc:
            log.exception("control command failed")
            return error_reply(f"internal error in tako-server: {exc!r}")
        return ok_reply(result)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await _read_line(reader)
                if line is None:
                    break
                if isinstance(line, ProtocolError):
                    writer.write(error_reply(line.message))
                elif line.strip():
                    writer.write(await self.answer(line))
                else:
                    continue
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # -- socket ---------------------------------------------------------------------------------------
    async def start(self, path: Path) -> None:
        sock = bind_socket(path)
        self._path = path
        self._inode = os.stat(path).st_ino
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE_BYTES + 2)
        log.info("control socket listening path=%s", path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._path is not None:
            # Remove the file only if it is still ours (a new server may have replaced it).
            with contextlib.suppress(OSError):
                if os.stat(self._path).st_ino == self._inode:
                    self._path.unlink()
            self._path = None


async def _read_line(reader: asyncio.StreamReader) -> bytes | ProtocolError | None:
    """One line; a ProtocolError for an oversized one (its rest is skipped); None at end of stream."""
    oversized = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial and not oversized:
                return exc.partial
            return None
        except asyncio.LimitOverrunError as exc:
            oversized = True
            await reader.readexactly(exc.consumed)
            continue
        if oversized or len(line) > MAX_LINE_BYTES + 1:
            return ProtocolError(f"request line is longer than {MAX_LINE_BYTES} bytes")
        return line


def bind_socket(path: Path, what: str = "control socket") -> socket.socket:
    """Bind at a temporary name with mode 0600, then rename over `path` (replacing a stale socket)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            pass  # nobody listening: stale, replaced below
        else:
            raise ControlError(
                f"another tako-server is already listening on {path}",
                hint="stop it first, or give this one another --socket",
            )
        finally:
            probe.close()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(tmp))
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot create the {what} {path}: {exc}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(tmp, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    os.replace(tmp, path)
    return sock
