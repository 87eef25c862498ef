"""The descriptor store of `tako-server-service`: keeps tako-server's listening sockets while none runs.

    python -m tako.server.fd_holder SOCKET_PATH SUPERVISOR_PID

Started by the service script's supervisor before its first tako-server, it lives as long as that
supervisor (the kernel sends it SIGTERM when the supervisor dies), so the ports are released exactly when
the service is stopped. On its unix socket (mode 0600) it answers one request per connection, a JSON line
with descriptors attached (SCM_RIGHTS): `put` replaces the sockets it keeps with the ones attached, `get`
returns copies of them. The protocol's client side is server/fd_store.py. Only the standard library is
imported: this process is started at every service start and stays small.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys

MAX_HEADER = 64 * 1024
MAX_SOCKETS = 253
PR_SET_PDEATHSIG = 1
TIMEOUT = 5.0  # one client at a time: a client that sends nothing does not block the next for long


def _die_with(parent: int) -> None:
    """SIGTERM when the supervisor dies (even by SIGKILL): the ports must not outlive the service."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(0)


def _serve_one(conn: socket.socket, kept: dict[str, socket.socket]) -> None:
    data, fds, _, _ = socket.recv_fds(conn, MAX_HEADER, MAX_SOCKETS)
    given = [socket.socket(fileno=fd) for fd in fds]
    try:
        request = json.loads(data)
        names = [str(n) for n in request.get("names", [])]
        verb = request.get("verb")
    except ValueError:
        verb, names = None, []
    if verb == "put" and len(names) == len(given):
        for sock in kept.values():
            sock.close()
        kept.clear()
        kept.update(zip(names, given, strict=True))
        given = []
        reply, send = {"status": "ok", "names": []}, []
    elif verb == "get":
        reply, send = {"status": "ok", "names": list(kept)}, [s.fileno() for s in kept.values()]
    else:
        reply, send = {"status": "error", "message": "expected put (with its sockets) or get"}, []
    for sock in given:
        sock.close()
    socket.send_fds(conn, [json.dumps(reply).encode() + b"\n"], send)


def serve(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old)
    server.listen(16)
    kept: dict[str, socket.socket] = {}
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            with contextlib.suppress(OSError):
                _serve_one(conn, kept)


def main() -> None:
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        sys.exit("usage: python -m tako.server.fd_holder SOCKET_PATH SUPERVISOR_PID")
    _die_with(int(sys.argv[2]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(sys.argv[1])


if __name__ == "__main__":
    main()
