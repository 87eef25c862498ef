"""The client half of one-off commands, run by `tako-server run-as-app` (oneoff.py is the server half).

It hands this process's stdin, stdout and stderr to tako-server with the request, forwards the signals it
gets to the command, and returns the command's exit status. When the session that started it is gone (its
stdout or stderr hung up: the SSH channel closed without a terminal, or the terminal went away) it leaves,
and tako-server hangs the command up.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
from pathlib import Path
from typing import Any

from tako.errors import OneOffError
from tako.server.apps.oneoff_protocol import FORWARDED_SIGNALS, RunRequest

HUNG_UP = 128 + signal.SIGHUP  # the status a shell reports for a command ended by SIGHUP
_GONE = select.POLLERR | select.POLLHUP


def run(path: Path, request: RunRequest) -> int:
    """Hand our stdin/stdout/stderr and `request` to tako-server; forward signals; the command's status."""
    conn = _connect(path)
    forwarder = _Forwarder(conn)
    # Forwarding starts before the request goes: the command may start, print and be interrupted before
    # tako-server's "started" arrives here, and that Ctrl-C must reach it, not end this process.
    previous = {sig: signal.signal(sig, forwarder.handle) for sig in FORWARDED_SIGNALS}
    try:
        with conn:
            socket.send_fds(conn, [request.encode()], [0, 1, 2])
            forwarder.start()
            replies = _Replies(conn)
            first = replies.next(watch_session=False)
            if "error" in first:
                hint = str(first.get("hint") or "") or None
                raise OneOffError(str(first["error"]), hint=hint, exit_code=int(first.get("status", 125)))
            last = replies.next(watch_session=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if last.get("hung_up"):
        return HUNG_UP  # nobody is left to tell; closing the connection made tako-server hang it up
    if "exit" not in last:
        raise OneOffError("tako-server stopped before the command finished")
    return int(last["exit"])


class _Forwarder:
    """Signal handler: each signal goes to tako-server as {"signal": N}; those caught before the request
    went are held until it has (tako-server reads the request first)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.held: list[int] | None = []

    def handle(self, number: int, _frame: object) -> None:
        if self.held is not None:
            self.held.append(number)
        else:
            self._send(number)

    def start(self) -> None:
        held, self.held = self.held or [], None
        for number in held:
            self._send(number)

    def _send(self, number: int) -> None:
        with contextlib.suppress(OSError):  # tako-server is gone: the reply loop says so
            self.conn.sendall(json.dumps({"signal": number}).encode() + b"\n")


def _connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError as exc:
        conn.close()
        raise OneOffError(
            f"cannot reach tako-server's one-off socket {path}: {exc.strerror or exc}",
            hint="is tako-server running (and recent enough to run one-off commands)? "
            "`tako servers status` shows it",
        ) from exc
    return conn


class _Replies:
    """Reply lines from tako-server, read unbuffered so that `poll` sees every one that has not been read."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""
        self.poll = select.poll()
        self.poll.register(conn, select.POLLIN)

    def next(self, *, watch_session: bool) -> dict[str, Any]:
        if watch_session:
            # Only hang-ups are asked for (no events): a pipe whose reader closed reports POLLERR.
            self.poll.register(1, 0)
            self.poll.register(2, 0)
        while b"\n" not in self.buffer:
            for fd, events in self.poll.poll():
                if fd in (1, 2) and events & _GONE:
                    return {"hung_up": True}
            data = self.conn.recv(65536)
            if not data:
                return {}
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return _parse(line)


def _parse(line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise OneOffError(f"unexpected reply from tako-server: {line[:200]!r}") from exc
    return data if isinstance(data, dict) else {}
