"""A real tako-server subprocess for integration tests, and a control-socket client.

`TakoServer` runs `python -m tako.server.main` on loopback with port 0 listeners, a temporary data dir and
socket, fast health/drain settings, and ACME disabled. `stop()` (SIGTERM) and `kill()` (SIGKILL) are
bounded; `cleanup()` kills any instance process left under the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from tako.config import envfile

APPS_DIR = Path(__file__).parent / "apps"
REPO = Path(__file__).resolve().parents[2]

FAST_APP_SETTINGS = {
    "health_interval": 0.2,
    "healthy_timeout": 10.0,
    "drain_timeout": 10.0,
    "stop_grace": 3.0,
    "cold_start_timeout": 15.0,
    # These servers run as root on private temp dirs (0700) with releases anywhere: apps run as the
    # server's user. Isolation itself is tested on testbed hosts installed by install-server.
    "isolation": "off",
}


class ControlError(Exception):
    def __init__(self, message: str, reply: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply


def wait_for(
    condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


class ControlClient:
    """Blocking JSON-lines client for the control socket."""

    def __init__(self, path: Path, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._buf = b""

    def send_line(self, line: bytes) -> dict[str, Any]:
        self.sock.sendall(line)
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("tako-server closed the control connection")
            self._buf += chunk
        reply, _, self._buf = self._buf.partition(b"\n")
        return json.loads(reply)  # type: ignore[no-any-return]

    def request(self, command: str, **fields: Any) -> dict[str, Any]:
        return self.send_line(json.dumps({"command": command, **fields}).encode() + b"\n")

    def call(self, command: str, **fields: Any) -> Any:
        reply = self.request(command, **fields)
        if reply["status"] != "ok":
            raise ControlError(reply.get("message", ""), reply)
        return reply["data"]

    def close(self) -> None:
        self.sock.close()


def make_release(
    data_dir: Path,
    app: str,
    version: str,
    env: dict[str, str] | None = None,
    *,
    start: str = "python3 testapp.py",
    health_check: str = "/_tako/status",
    request_buffering: bool = True,
    compression: bool = True,
    https: bool = True,
) -> Path:
    """A release dir as the CLI leaves it: app files, app.json and .env (0600)."""
    release = data_dir / "apps" / app / "releases" / version
    release.mkdir(parents=True, exist_ok=True)
    shutil.copy(APPS_DIR / "testapp.py", release / "testapp.py")
    meta: dict[str, object] = {
        "name": app,
        "version": version,
        "start": start,
        "health_check": health_check,
        "env": "test",
    }
    if not request_buffering:
        meta["request_buffering"] = False
    if not compression:
        meta["compression"] = False
    if not https:
        meta["https"] = False
    (release / "app.json").write_text(json.dumps(meta))
    values = {"TAKO_BUILD": version, "ENV": "test", **(env or {})}
    env_path = release / ".env"
    env_path.write_text(envfile.render(values))
    env_path.chmod(0o600)
    (data_dir / "apps" / app / "shared" / "logs").mkdir(parents=True, exist_ok=True)
    return release


class TakoServer:
    """One tako-server process. Use as a context manager or call stop()/cleanup() in a finally."""

    def __init__(self, base: Path | None = None, app_settings: dict[str, Any] | None = None) -> None:
        # Unix socket paths are limited to 108 bytes: keep the directory short.
        self.base = base or Path(tempfile.mkdtemp(prefix="tako-srv-", dir="/tmp"))
        self.data_dir = self.base / "data"
        self.socket = self.base / "tako.sock"
        self.config = self.base / "server-config.toml"
        self.stderr_path = self.base / "server.log"
        settings = {**FAST_APP_SETTINGS, **(app_settings or {})}
        lines = ["[apps]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        lines += ["", "[acme]", "enabled = false", ""]
        # Each test server's /metrics on a port of its own: many run at once on one machine.
        lines += ["[metrics]", 'listen = "127.0.0.1:0"', ""]
        self.config.write_text("\n".join(lines))
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port: int | None = None
        self.https_port: int | None = None
        self._clients: list[ControlClient] = []

    def command(
        self, *, data_dir: Path | None = None, socket: Path | None = None, http_port: int = 0
    ) -> list[str]:
        """The tako-server command line on this directory's config, listening on loopback (any ports);
        its data dir and control socket are this server's unless given."""
        return [
            sys.executable,
            "-m",
            "tako.server.main",
            "--config",
            str(self.config),
            "--data-dir",
            str(data_dir or self.data_dir),
            "--socket",
            str(socket or self.socket),
            "--listen",
            "127.0.0.1",
            "--http-port",
            str(http_port),
            "--https-port",
            "0",
        ]

    def start(
        self, timeout: float = 30.0, *, flags: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> TakoServer:
        """Run tako-server with this directory's config; `flags` are added to its command line, `env` to
        its environment (as a service manager sets it)."""
        cmd = [*self.command(), *flags]
        stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=stderr, stderr=stderr, env=env, cwd=self.base)
        stderr.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"tako-server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                hello = self.client().call("hello")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"tako-server did not open its socket:\n{self.log()}") from None
                time.sleep(0.02)
        self.http_port = hello.get("http_port")
        self.https_port = hello.get("https_port")
        return self

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")[-6000:]
        return ""

    def client(self) -> ControlClient:
        c = ControlClient(self.socket)
        self._clients.append(c)
        return c

    def call(self, command: str, **fields: Any) -> Any:
        c = self.client()
        try:
            return c.call(command, **fields)
        finally:
            c.close()
            self._clients.remove(c)

    def deploy(
        self,
        app: str,
        version: str,
        *,
        routes: tuple[str, ...] | None = None,
        instances: int = 1,
        idle_timeout: int = 300,
        env: dict[str, str] | None = None,
        **release_kw: Any,
    ) -> Any:
        path = make_release(self.data_dir, app, version, env, **release_kw)
        return self.call(
            "deploy",
            app=app,
            version=version,
            path=str(path),
            routes=list(routes or (f"{app}.tako.test",)),
            instances=instances,
            idle_timeout=idle_timeout,
        )

    def app_log(self, app: str) -> str:
        path = self.data_dir / "apps" / app / "shared" / "logs" / "app.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def instance_processes(self) -> list[psutil.Process]:
        """Every process whose working directory is under this server's data dir (the instances)."""
        found = []
        root = str(self.data_dir)
        for proc in psutil.process_iter(["cwd"]):
            with contextlib.suppress(psutil.Error):
                cwd = proc.info.get("cwd") or ""
                if cwd.startswith(root):
                    found.append(proc)
        return found

    def cleanup(self) -> None:
        self.stop()
        for proc in self.instance_processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> TakoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@contextlib.contextmanager
def running_server(app_settings: dict[str, Any] | None = None) -> Iterator[TakoServer]:
    server = TakoServer(app_settings=app_settings)
    try:
        yield server.start()
    finally:
        server.cleanup()


def get(port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 10.0) -> tuple[int, str]:
    """One plain HTTP GET (new connection); returns (status, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


# -- HTTPS through the proxy ------------------------------------------------------------------------------

CLIENT_TLS = ssl.create_default_context()
CLIENT_TLS.check_hostname = False
CLIENT_TLS.verify_mode = ssl.CERT_NONE  # the proxy serves a self-signed certificate for routed hosts


class Response(NamedTuple):
    status: int
    body: str
    close: bool


class ConnectionLost(Exception):
    """The connection closed before any byte of a response arrived."""


class HttpsConnection:
    """A minimal HTTP/1.1 keep-alive client over TLS with SNI = the route's host (never resolved)."""

    def __init__(self, port: int, host: str) -> None:
        self.port = port
        self.host = host
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = False

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=CLIENT_TLS, server_hostname=self.host
        )
        self.used = False

    async def get(self, path: str = "/", *, close: bool = False, timeout: float = 30.0) -> Response:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        conn = "close" if close else "keep-alive"
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: {conn}\r\n\r\n".encode())
        self.used = True
        return await asyncio.wait_for(self._read(), timeout)

    async def _read(self) -> Response:
        assert self.reader is not None
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ConnectionLost() from exc
            raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        close = headers.get("connection", "").lower() == "close"
        if close:
            await self.close()
        return Response(status, body.decode(errors="replace"), close)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def websocket(port: int, host: str) -> Any:
    """A WebSocket to `host`'s /ws through the proxy's HTTPS listener on `port` (`async with` it)."""
    from websockets.asyncio.client import connect

    return connect(
        f"wss://{host}/ws",
        host="127.0.0.1",
        port=port,
        ssl=CLIENT_TLS,
        server_hostname=host,
        open_timeout=30,
    )


async def https_get(port: int, host: str, path: str = "/", timeout: float = 30.0) -> Response:
    """One request on a new connection."""
    conn = HttpsConnection(port, host)
    try:
        return await conn.get(path, close=True, timeout=timeout)
    finally:
        await conn.close()


@dataclass
class LoadResult:
    responses: list[Response] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0

    @property
    def statuses(self) -> Counter[int]:
        return Counter(r.status for r in self.responses)

    def failures(self) -> list[str]:
        bad = [f"{r.status} {r.body[:80]!r}" for r in self.responses if not 200 <= r.status < 300]
        return bad + self.errors


async def run_load(
    port: int,
    host: str,
    stop: asyncio.Event,
    *,
    keepalive: int = 4,
    fresh: int = 2,
    path: str = "/",
    result: LoadResult | None = None,
) -> LoadResult:
    """Requests as fast as the workers go until `stop` is set: `keepalive` workers reuse one connection,
    `fresh` workers open a new connection per request. A request is retried once only when a reused
    connection closed before any byte of its response arrived (what every HTTP client does)."""
    result = result if result is not None else LoadResult()

    async def keepalive_worker() -> None:
        conn = HttpsConnection(port, host)
        try:
            while not stop.is_set():
                try:
                    result.responses.append(await conn.get(path))
                except ConnectionLost:
                    reused = conn.used
                    await conn.close()
                    if not reused:
                        result.errors.append("connection closed before a response")
                    result.reconnects += 1
                    try:
                        result.responses.append(await conn.get(path))
                    except Exception as exc:
                        result.errors.append(repr(exc))
                        await conn.close()
                except Exception as exc:
                    result.errors.append(repr(exc))
                    await conn.close()
        finally:
            await conn.close()

    async def fresh_worker() -> None:
        while not stop.is_set():
            try:
                result.responses.append(await https_get(port, host, path))
            except Exception as exc:
                result.errors.append(repr(exc))

    await asyncio.gather(
        *[keepalive_worker() for _ in range(keepalive)], *[fresh_worker() for _ in range(fresh)]
    )
    return result
