"""One-off commands, the server half (oneoff_client.py is the other): run a command as an app, in one of
its release directories, with that release's environment (`tako run`, and a deploy's release command
such as `python manage.py migrate`).

The SSH user (`tako`) cannot become an app's uid; tako-server can. So `tako-server run-as-app` (the client
half, run over SSH) connects to tako-server's one-off socket beside the control socket and hands over its
stdin, stdout and stderr as file descriptors (SCM_RIGHTS) with the request; tako-server (the server half)
starts the command on exactly those descriptors — a PTY stays a PTY — and answers with its exit status.
Signals the client receives (Ctrl-C through a PTY, SIGTERM, SIGHUP when the SSH session ends) are
forwarded to the command's process group; a client that goes away (killed, or leaving because its
session's stdout hung up) leaves the command SIGHUP, then SIGKILL. Secrets travel in neither direction:
tako-server reads them from the release's `.env`.

The release is the live one by default, or any directory under `<app dir>/releases/`, staged ones
(`.partial-*`, not yet known to tako-server) included: a deploy runs its release command there before any
server switches.

The wire format is in oneoff_protocol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

from tako.config.loading import name_problem
from tako.errors import OneOffError, TakoError
from tako.server.apps import isolation, spawner
from tako.server.apps.oneoff_protocol import (
    FORWARDED_SIGNALS,
    MAX_REQUEST_BYTES,
    NOT_EXECUTABLE,
    NOT_FOUND,
    RunRequest,
)
from tako.server.apps.registry import AppRegistry
from tako.server.apps.release import Release, ensure_data_dir, load_release
from tako.server.control import bind_socket

log = logging.getLogger("tako.server.oneoff")

HANGUP_GRACE = 10.0  # seconds a command gets after SIGHUP (its client went away) before SIGKILL
# Variables an instance gets that make no sense for a command that serves nothing.
INSTANCE_ONLY = ("PORT", "HOST", "TAKO_INSTANCE")


def command_env(release: Release) -> dict[str, str]:
    """An instance's environment (the release's `.env`, TAKO_* with TAKO_DATA_DIR, its venv on PATH)
    without its port."""
    env = spawner.instance_env(release, 0, "")
    for name in INSTANCE_ONLY:
        env.pop(name, None)
        if name in release.env:
            env[name] = release.env[name]
    return env


def command_argv(release: Release, argv: tuple[str, ...], setpriv: str) -> list[str]:
    """`argv` as the app's uid when it has one (no groups, no capabilities, as its instances)."""
    if release.uid is None:
        return list(argv)
    return isolation.run_as(setpriv, release.uid, list(argv))


def exit_status(returncode: int) -> int:
    """A shell's exit status: 128 + N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class OneOffServer:
    """tako-server's half: accept run requests on the one-off socket and start their commands."""

    def __init__(self, registry: AppRegistry) -> None:
        self.registry = registry
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._running: set[asyncio.subprocess.Process] = set()
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, path: Path) -> None:
        self._sock = bind_socket(path, "one-off socket")
        self._path = path
        self._accepting = asyncio.create_task(self._accept_loop(self._sock))
        log.info("one-off socket listening path=%s", path)

    async def close(self) -> None:
        """Stop accepting; commands still running get SIGTERM, then SIGKILL after the app's stop grace."""
        if self._accepting is not None:
            self._accepting.cancel()
        if self._sock is not None:
            self._sock.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        for process in list(self._running):
            spawner.signal_group(process.pid, signal.SIGTERM)
        if self._running:
            await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in self._running],
                timeout=self.registry.settings.stop_grace,
            )
        for process in list(self._running):
            spawner.kill_group(process.pid)
        for task in list(self._clients):
            task.cancel()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(self._client(conn))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def _client(self, conn: socket.socket) -> None:
        fds: list[int] = []
        program = "the command"
        try:
            line, early, fds = await _receive_request(conn)
            request = RunRequest.decode(line)
            program = request.argv[0]
            process = await self._start(request, fds)
        except TakoError as exc:
            _send(conn, {"error": exc.message, "hint": exc.hint, "status": OneOffError.exit_code})
            conn.close()
            return
        except OSError as exc:
            status = NOT_FOUND if isinstance(exc, FileNotFoundError) else NOT_EXECUTABLE
            hint = "the release's PATH is its .venv/bin (if any), then /usr/local/bin:/usr/bin:/bin"
            _send(conn, {"error": f"cannot run {program}: {exc.strerror}", "hint": hint, "status": status})
            conn.close()
            return
        finally:
            for fd in fds:
                os.close(fd)  # the child has its own copies
        self._running.add(process)
        try:
            await self._supervise(conn, process, early)  # owns `conn` from here on
        finally:
            self._running.discard(process)

    async def _start(self, request: RunRequest, fds: list[int]) -> asyncio.subprocess.Process:
        if len(fds) != 3:
            raise OneOffError(
                f"a one-off request carries stdin, stdout and stderr; got {len(fds)} descriptors"
            )
        release = await self._release(request)
        process = await asyncio.create_subprocess_exec(
            *command_argv(release, request.argv, self.registry.isolation.setpriv),
            cwd=str(release.path),
            env=command_env(release),
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            start_new_session=True,  # its own group: signals reach the command and all it started
        )
        log.info("one-off started app=%s release=%s pid=%d", request.app, release.path.name, process.pid)
        return process

    async def _release(self, request: RunRequest) -> Release:
        """The live release, or the release at `request.release` prepared for the app's uid."""
        problem = name_problem(request.app)
        if problem:  # the name becomes a path and may get a uid: nothing but an app name will do
            raise OneOffError(f"invalid app name {request.app!r}: {problem}")
        if request.release is None:
            app = self.registry.apps.get(request.app)
            if app is None:
                known = ", ".join(sorted(self.registry.apps)) or "none"
                raise OneOffError(
                    f"{request.app} has no live release on this server (deployed apps: {known})",
                    hint="deploy it first (`tako deploy`)",
                )
            return app.release
        app_dir = self.registry.data_dir / "apps" / request.app
        path = Path(request.release)
        isolation.check_release_path(app_dir, path)
        release = load_release(request.app, path.name, path)
        ensure_data_dir(release)  # before `prepare`, which makes it the app's to write
        if not self.registry.isolation.enabled:
            return release
        store = self.registry.store
        uid = isolation.check_uid(store.app_uid(request.app, isolation.UID_FIRST, isolation.UID_COUNT))
        await asyncio.to_thread(isolation.prepare, app_dir, path, uid)
        return replace(release, uid=uid)

    async def _supervise(
        self, conn: socket.socket, process: asyncio.subprocess.Process, early: bytes
    ) -> None:
        """Forward the client's signals (`early`: those sent right behind the request) until the command
        exits; a client gone means SIGHUP, then KILL."""
        _send(conn, {"started": process.pid})
        try:
            reader, writer = await _streams(conn, early)
        except OSError:
            conn.close()
            raise
        forwarding = asyncio.create_task(_forward_signals(reader, process.pid))
        exited = asyncio.create_task(process.wait())
        await asyncio.wait({forwarding, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            spawner.signal_group(process.pid, signal.SIGHUP)
            try:
                await asyncio.wait_for(asyncio.shield(exited), HANGUP_GRACE)
            except TimeoutError:
                spawner.kill_group(process.pid)
                await exited
        forwarding.cancel()
        status = exit_status(exited.result())
        log.info("one-off exited pid=%d status=%d", process.pid, status)
        with contextlib.suppress(OSError):
            writer.write(json.dumps({"exit": status}).encode() + b"\n")
            await writer.drain()
        writer.close()


async def _receive_request(conn: socket.socket) -> tuple[bytes, bytes, list[int]]:
    """The request line, what followed it (signals sent right behind it) and the descriptors sent with it
    (with its first bytes)."""
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), ready)
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
    # Close-on-exec: without it every process tako-server starts meanwhile (instances too) would inherit
    # the caller's stdio and keep its session's pipes open.
    data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST_BYTES, 3, socket.MSG_CMSG_CLOEXEC)
    while b"\n" not in data:
        if not data or len(data) >= MAX_REQUEST_BYTES:
            for fd in fds:
                os.close(fd)
            raise OneOffError("incomplete one-off request")
        more = await loop.sock_recv(conn, MAX_REQUEST_BYTES)
        if not more:
            data = b""
        data += more
    line, _, early = data.partition(b"\n")
    return line, early, fds


async def _streams(conn: socket.socket, early: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over `conn` whose reader first gives `early`, the bytes already read from it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    reader.feed_data(early)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=conn)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _forward_signals(reader: asyncio.StreamReader, pgid: int) -> None:
    """Send each {"signal": N} the client writes to the command's group; returns when the client goes."""
    allowed = {int(s) for s in FORWARDED_SIGNALS}
    while line := await reader.readline():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            number = int(json.loads(line)["signal"])
            if number in allowed:
                spawner.signal_group(pgid, signal.Signals(number))


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.setblocking(True)
        conn.sendall(json.dumps(message).encode() + b"\n")
        conn.setblocking(False)
