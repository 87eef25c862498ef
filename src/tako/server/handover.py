"""Hand-over: a new tako-server process takes over from the running one without dropping a request.

The running (old) process starts the new one itself and passes it, over a unix socketpair (SCM_RIGHTS),
the open file descriptions of its listening sockets and of its data-dir lock:

1. old → new: the descriptors (lock, HTTP listener, HTTPS listener, and with `[server] workers > 1` each
   data-plane worker's HTTP and HTTPS listener) and their ports.
2. new: shares the lock (an flock belongs to the open file description, so exactly these two processes
   hold it and no third server can start), restores state and routes, listens on the very same sockets,
   starts its workers, then says `ready` — within `READY_TIMEOUT`.
3. old: stops accepting and closes its control and one-off sockets, says `go`.
4. new: binds the control and one-off sockets, says `serving`.
5. old: finishes in-flight requests and WebSockets (bounded by `drain_timeout`) and exits.

Passing the descriptors, rather than binding a second SO_REUSEPORT socket, keeps one accept queue: a
connection that waits in the backlog while the old process stops accepting is accepted by the new one;
with two reuse-port sockets the kernel would reset the connections queued on the one that closes.
If the new process fails or is not ready in time, the old one kills it and keeps serving, unchanged;
the reason (the new process's own error message) goes back to whoever asked for the hand-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tako import __version__
from tako.errors import HandoverFailed, TakoError
from tako.server.control import bind_socket

log = logging.getLogger("tako.server.handover")

ENV_FD = "TAKO_HANDOVER_FD"  # set only in the new process: the fd of its end of the channel
READY_TIMEOUT = 120.0  # the new process restores routes, starts workers and always-on instances in this
GO_TIMEOUT = 10.0  # the old process answers `ready` at once; this bounds a hung one
SERVING_TIMEOUT = 120.0  # after `go`: adopting the instances (a health check each), listeners, workers
STOP_TIMEOUT = 30.0  # a new process that failed is given this long to stop its instances after SIGTERM
MAX_LINE = 64 * 1024
MAX_WORKER_PAIRS = 125  # the kernel passes at most 253 descriptors in one message: lock + 2 + 2 per worker


PID_FILE = "tako-server.pid"  # beside the control socket, written by tako-server-service


def socket_path(control_socket: Path) -> Path:
    """The hand-over socket beside the control socket (same directory, same owner, mode 0600)."""
    return control_socket.with_name(control_socket.name + ".handover")


# -- the new process's side ---------------------------------------------------------------------------


@dataclass
class Inherited:
    """What the new process receives: the lock's and listeners' descriptors, and the channel."""

    lock_fd: int
    http: socket.socket
    https: socket.socket
    channel: socket.socket
    workers: list[tuple[socket.socket, socket.socket]]  # the old workers' (HTTP, HTTPS) listeners


def pending_channel() -> socket.socket | None:
    """The channel when this process was started by a hand-over (the variable is then removed from the
    environment, so that nothing this process starts inherits it)."""
    value = os.environ.pop(ENV_FD, None)
    if not value:
        return None
    channel = socket.socket(fileno=int(value))
    channel.settimeout(GO_TIMEOUT)
    return channel


def receive(channel: socket.socket) -> Inherited:
    """The descriptors the old process sends right after starting us."""
    header, fds, _, _ = socket.recv_fds(channel, MAX_LINE, 3 + 2 * MAX_WORKER_PAIRS)
    for extra in fds:
        os.set_inheritable(extra, False)
    info = json.loads(header)
    if info.get("kind") != "listeners":
        raise TakoError(f"hand-over: unexpected first message {info.get('kind')!r}")
    expected = 3 + 2 * int(info.get("workers", 0))
    if len(fds) != expected:
        raise TakoError(
            f"hand-over: expected {expected} descriptors from the running tako-server, got {len(fds)}"
        )
    socks = [socket.socket(fileno=fd) for fd in fds[1:]]
    workers = list(zip(socks[2::2], socks[3::2], strict=True))
    return Inherited(lock_fd=fds[0], http=socks[0], https=socks[1], channel=channel, workers=workers)


def _send(channel: socket.socket, message: dict[str, Any]) -> None:
    channel.sendall(json.dumps(message).encode() + b"\n")


def _read_line(channel: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_LINE:
        chunk = channel.recv(MAX_LINE)
        if not chunk:
            raise TakoError("hand-over: the running tako-server closed the channel")
        data += chunk
    return dict(json.loads(data))


async def announce_ready(inherited: Inherited) -> None:
    """Tell the old process we are ready; wait for its `go` (it then no longer accepts nor listens on the
    control socket)."""
    _send(inherited.channel, {"kind": "ready", "pid": os.getpid()})
    reply = await asyncio.to_thread(_read_line, inherited.channel)
    if reply.get("kind") != "go":
        raise TakoError(f"hand-over: the running tako-server answered {reply.get('kind')!r} instead of go")


def announce_serving(inherited: Inherited) -> None:
    with contextlib.suppress(OSError):
        _send(inherited.channel, {"kind": "serving", "pid": os.getpid(), "version": __version__})
    inherited.channel.close()


def report_failure(channel: socket.socket | None, exc: TakoError) -> None:
    """The new process cannot take over: say why to the old one (which keeps serving)."""
    if channel is None or channel.fileno() < 0:
        return
    with contextlib.suppress(OSError), channel:
        _send(channel, {"kind": "failed", "message": exc.message, "hint": exc.hint or ""})


# -- the old process's side ---------------------------------------------------------------------------


@dataclass
class Handing:
    """What the old process hands over, and the two steps it takes when the new one is ready."""

    lock_fd: int
    http: socket.socket
    https: socket.socket
    workers: list[tuple[socket.socket, socket.socket]]  # each data-plane worker's listeners
    let_go: Callable[[], Awaitable[None]]  # stop accepting, free the control sockets, stop watching
    resume: Callable[[], Awaitable[None]]  # the successor failed after let_go: serve again
    retire: Callable[[], None]  # drain in-flight requests, then exit leaving the instances running
    pid_file: Path  # the service script's copy of the pid: made to name the successor if it names us


async def hand_over(handing: Handing, argv: list[str]) -> dict[str, Any]:
    """Start a new tako-server with `argv` and hand it the listeners; returns its pid and version."""
    if len(handing.workers) > MAX_WORKER_PAIRS:
        raise HandoverFailed(
            f"{len(handing.workers) + 1} data-plane processes are more listeners than one hand-over passes",
            hint=f"set [server] workers to at most {MAX_WORKER_PAIRS + 1} and restart tako-server",
        )
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            pass_fds=(theirs.fileno(),),
            env={**os.environ, ENV_FD: str(theirs.fileno())},
            stdin=asyncio.subprocess.DEVNULL,
        )
    finally:
        theirs.close()
    log.info("hand-over: started tako-server pid=%d", proc.pid)
    ports = {"http_port": handing.http.getsockname()[1], "https_port": handing.https.getsockname()[1]}
    header = json.dumps({"kind": "listeners", "workers": len(handing.workers), **ports}).encode()
    listeners = [handing.http, handing.https, *(sock for pair in handing.workers for sock in pair)]
    socket.send_fds(ours, [header + b"\n"], [handing.lock_fd, *(sock.fileno() for sock in listeners)])
    reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_LINE)
    try:
        try:
            await _expect(reader, "ready", READY_TIMEOUT, proc)
        except HandoverFailed:
            await _stop_failed(proc, signal.SIGTERM)  # it adopted nothing: it stops what it started
            raise
        await handing.let_go()
        writer.write(json.dumps({"kind": "go"}).encode() + b"\n")
        try:
            serving = await _expect(reader, "serving", SERVING_TIMEOUT, proc)
        except HandoverFailed:
            # It may have adopted the instances: SIGQUIT makes it exit leaving them running, for us.
            await _stop_failed(proc, signal.SIGQUIT)
            await handing.resume()
            raise
    finally:
        writer.close()
    log.info("hand-over: tako-server pid=%d (%s) serves; draining", proc.pid, serving.get("version"))
    _notify_service_manager(proc.pid)
    _update_pid_file(handing.pid_file, proc.pid)
    handing.retire()
    return {"pid": proc.pid, "version": serving.get("version", "")}


async def _expect(
    reader: asyncio.StreamReader, kind: str, timeout: float, proc: asyncio.subprocess.Process
) -> dict[str, Any]:
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
    except TimeoutError:
        raise HandoverFailed(
            f"the new tako-server (pid {proc.pid}) was not {kind} within {timeout:g} s; "
            "this one keeps serving",
            hint="see tako-server's log for what the new process was waiting for",
        ) from None
    if not line:
        await _wait_exit(proc)
        raise HandoverFailed(
            f"the new tako-server (pid {proc.pid}) exited (status {proc.returncode}) before it was {kind}; "
            "this one keeps serving",
            hint="see tako-server's log for its error",
        )
    message = dict(json.loads(line))
    if message.get("kind") == "failed":
        raise HandoverFailed(
            f"the new tako-server cannot start: {message.get('message')}; this one keeps serving",
            hint=message.get("hint") or None,
        )
    if message.get("kind") != kind:
        raise HandoverFailed(f"the new tako-server said {message.get('kind')!r} instead of {kind!r}")
    return message


async def _wait_exit(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_TIMEOUT):
            await proc.wait()


async def _stop_failed(proc: asyncio.subprocess.Process, how: signal.Signals) -> None:
    """A new process that did not take over stops (SIGTERM: stopping what it started; SIGQUIT: leaving
    the instances running), or is killed after STOP_TIMEOUT."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(how)
        await _wait_exit(proc)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _notify_service_manager(pid: int) -> None:
    """Under systemd (NotifyAccess=main), the new process becomes the service's main process."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"MAINPID={pid}".encode(), address)


def _update_pid_file(path: Path, pid: int) -> None:
    """The pid file the service script keeps for people names the successor once it serves (only when it
    named this process: nothing else's file is touched)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) != os.getpid():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(f"{pid}\n")
        tmp.chmod(0o644)
        os.replace(tmp, path)


def successor_argv() -> list[str]:
    """This process's own command line: after an upgrade, the same `tako-server` script (or interpreter)
    runs the new code, and the new process looks like the old one to `ps` and the service script."""
    script = Path(sys.argv[0])
    if script.name == "tako-server" and os.access(script, os.X_OK):
        return [str(script), *sys.argv[1:]]
    return [sys.executable, "-m", "tako.server.main", *sys.argv[1:]]


# -- the request: `tako-server handover` asks the running server through its hand-over socket -------------


class HandoverServer:
    """The old process's hand-over socket: one request line `handover`, one JSON reply line."""

    def __init__(self, begin: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._begin = begin
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None
        self._inode = 0
        self._busy = False

    async def start(self, path: Path) -> None:
        sock = bind_socket(path, "hand-over socket")
        self._path, self._inode = path, os.stat(path).st_ino
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                if os.stat(self._path).st_ino == self._inode:  # not the new process's socket
                    self._path.unlink()
            self._path = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await reader.readline()).strip()
            if line != b"handover":
                reply: dict[str, Any] = {"status": "error", "message": f"unknown request {line[:40]!r}"}
            elif self._busy:
                reply = {"status": "error", "message": "a hand-over is already under way"}
            else:
                self._busy = True
                try:
                    reply = {"status": "ok", **await self._begin()}
                except TakoError as exc:
                    log.error("hand-over failed: %s", exc.message)
                    reply = {"status": "error", "message": exc.message, "hint": exc.hint or ""}
                finally:
                    self._busy = False
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError):
            pass
        finally:
            writer.close()


def request(
    path: Path, timeout: float = READY_TIMEOUT + SERVING_TIMEOUT + STOP_TIMEOUT + 30
) -> dict[str, Any]:
    """Ask the tako-server listening on `path` to hand over to a new process; its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise TakoError(
                f"no tako-server answers on {path}: {exc.strerror or exc}",
                hint="start it (tako-server-service start, or systemctl start tako-server)",
            ) from None
        sock.sendall(b"handover\n")
        reply = sock.makefile("rb").readline()
    if not reply:
        raise TakoError("the running tako-server closed the hand-over socket without an answer")
    message = dict(json.loads(reply))
    if message.get("status") != "ok":
        raise TakoError(str(message.get("message")), hint=message.get("hint") or None)
    return message
